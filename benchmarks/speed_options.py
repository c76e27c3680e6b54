"""What each CPU speed option of ``lightning_cnn`` is worth: ms per training step of the slides' BatchNorm CNN and
LeNet under each option, in one process, options alternating, and (``--accuracy``) the 1-epoch test accuracy of each.

    python benchmarks/speed_options.py [--models bn_cnn lenet] [--steps 40] [--warmup 8] [--rounds 3]
                                       [--accuracy] [--seeds 2] [--data-dir DIR] [--markdown PATH]

A plain PyTorch loop (forward, loss, backward, optimizer step) on real Fashion-MNIST batches, so the figures are
the model's own cost: ``benchmarks/keras_parity.py`` measures the same models through ``cli.py fit`` against
Keras, and ``benchmarks/throughput.py`` what Lightning's loop adds. The options, each a YAML key:

- ``dropout``: ``nn.Dropout`` (torch's Bernoulli draw per element) vs this package's ``Dropout`` (16 random bits per
  element; what :class:`~lightning_cnn.models.ConvNet` builds). Not a key: the package always uses its own.
- ``memory_format``: ``model.init_args.memory_format`` (``contiguous`` NCHW vs ``channels_last`` NHWC; ``auto`` is
  channels_last on a CPU).
- ``compile``: ``model.init_args.compile: true`` (``torch.compile``, inductor); its compile time is printed apart.
- ``threads``: ``cpu_threads`` (torch's intra-op threads; default: one per core).
- ``bf16``: ``--trainer configs/trainer/bf16.yaml`` (``torch.autocast`` bfloat16); on a CPU without AVX512-BF16 or
  AMX, torch has no fast bfloat16 convolution and emulates it (about 10x slower): left out there unless asked
  for with ``--variants`` or ``--accuracy`` (``precision: auto`` chooses bfloat16 only where it is native).

Each variant of a round is timed after ``--warmup`` untimed steps; the ratio to the first variant ("torch
defaults") is taken per round, then summarized as median (min–max). ``--accuracy`` trains torch's defaults, the
package's defaults and those in bfloat16 for one epoch on the first 48,000 training images (batch 128, the
configs' optimizers) and tests on the 10,000 test images, for ``--seeds`` seeds, and says whether bfloat16's
accuracies fall within float32's range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from machine import Report, add_markdown_argument, bf16_support, cpu_name  # benchmarks/machine.py (on sys.path)
from torch import Tensor, nn

from lightning_cnn.data import FashionMNISTDataModule
from lightning_cnn.hardware import cpu_has_native_bf16
from lightning_cnn.models import BatchNormCNN, LeNet
from lightning_cnn.models.layers import Dropout
from lightning_cnn.regularization import L1L2, LayerRegularizers, regularization_loss


@dataclass(frozen=True)
class Variant:
    name: str
    torch_dropout: bool = False
    channels_last: bool = False
    compile: bool = False
    threads: int = 0  # 0: torch's default
    bf16: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("torch defaults", torch_dropout=True),
        Variant("+ Dropout", channels_last=False),
        Variant("+ channels_last (default)", channels_last=True),
        Variant("default + compile", channels_last=True, compile=True),
        Variant("default, 1 thread", channels_last=True, threads=1),
        Variant("default + bf16", channels_last=True, bf16=True),
    )
}


TRAIN_IMAGES = 48_000  # the first 48,000 training images train (Keras' validation_split=0.2 leaves them)

# The variants whose 1-epoch accuracy --accuracy measures: torch's defaults, what the package does by default, and
# that in bfloat16 (what `precision: auto` chooses on a CPU with bfloat16 instructions; measured on any CPU, since an
# emulated bfloat16 is slow, not wrong).
ACCURACY_VARIANTS = ("torch defaults", "+ channels_last (default)", "default + bf16")


def build(model: str, variant: Variant, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model as the shipped config builds it, with the variant's options, and the config's optimizer."""
    torch.manual_seed(seed)
    if model == "bn_cnn":
        net: nn.Module = BatchNormCNN(conv_dropout=0.25, dense_dropout=0.5)
        optimizer: Callable = lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.95, eps=1e-7)  # noqa: E731
    else:
        l2 = LayerRegularizers(kernel=L1L2(l2=1e-4))
        net = LeNet(layer_regularizers={"conv1": l2, "conv2": l2})
        optimizer = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    if variant.torch_dropout:
        for parent in list(net.modules()):
            for name, child in parent.named_children():
                if isinstance(child, Dropout):
                    setattr(parent, name, nn.Dropout(child.p))
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = optimizer(net.parameters())
    if variant.compile:
        net.compile()
    return net, opt


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, variant: Variant) -> None:
    if variant.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
        logits = net(x)
    loss = F.cross_entropy(logits.float(), y) + regularization_loss(net)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_variant(model: str, variant: Variant, batches: list, warmup: int, steps: int) -> tuple[float, float]:
    """(ms per step after warm-up, seconds of the first step: compile time included)."""
    default_threads = torch.get_num_threads()
    if variant.threads:
        torch.set_num_threads(variant.threads)
    try:
        net, opt = build(model, variant, seed=0)
        net.train()
        start = time.perf_counter()
        for i in range(warmup + steps):
            if i == 1:
                first = time.perf_counter() - start
            if i == warmup:
                start_timed = time.perf_counter()
            x, y = batches[i % len(batches)]
            train_step(net, opt, x, y, variant)
        return 1000 * (time.perf_counter() - start_timed) / steps, first
    finally:
        torch.set_num_threads(default_threads)


def accuracy(model: str, variant: Variant, data: dict[str, Tensor], seed: int, batch_size: int) -> float:
    """Test accuracy after one epoch on the first ``TRAIN_IMAGES`` training images."""
    default_threads = torch.get_num_threads()
    if variant.threads:
        torch.set_num_threads(variant.threads)
    try:
        net, opt = build(model, variant, seed)
        order = torch.randperm(TRAIN_IMAGES, generator=torch.Generator().manual_seed(seed))
        net.train()
        for start in range(0, TRAIN_IMAGES, batch_size):
            idx = order[start : start + batch_size]
            train_step(net, opt, data["x_train"][idx], data["y_train"][idx], variant)
        net.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            for start in range(0, len(data["y_test"]), 1000):
                x = data["x_test"][start : start + 1000]
                if variant.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                correct += int((net(x).argmax(1) == data["y_test"][start : start + 1000]).sum())
        return correct / len(data["y_test"])
    finally:
        torch.set_num_threads(default_threads)


def load(data_dir: str | None) -> dict[str, Tensor]:
    """Fashion-MNIST standardized as the datamodule does: float NCHW images, int labels."""
    dm = FashionMNISTDataModule(data_dir=data_dir, download=False, val_split=0, batch_size=128)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    out = {}
    for split, dataset in (("train", dm.train_set), ("test", dm.test_set)):
        x, y = dataset.__getitems__(list(range(len(dataset))))
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main(argv: Optional[list[str]] = None) -> None:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=("bn_cnn", "lenet"), default=["bn_cnn", "lenet"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                        help=f"default: all of {list(VARIANTS)} (bf16 only on a CPU with native bfloat16)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--accuracy", action="store_true",
                        help="also 1-epoch test accuracy of the first variant (torch defaults) and of the package's "
                             "defaults, the options a user gets without asking")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant for --accuracy")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the datamodule's)")
    add_markdown_argument(parser)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    names = args.variants or [n for n in VARIANTS if cpu_has_native_bf16() or args.accuracy or not VARIANTS[n].bf16]
    variants = [VARIANTS[n] for n in names]

    data = load(args.data_dir)
    generator = torch.Generator().manual_seed(0)
    train_images = min(TRAIN_IMAGES, len(data["y_train"]))
    picks = torch.randperm(train_images, generator=generator)[: 16 * args.batch_size].reshape(16, args.batch_size)
    batches = [(data["x_train"][i], data["y_train"][i]) for i in picks]

    report.print(
        f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"by default, native bfloat16: {'yes' if cpu_has_native_bf16() else 'no'} ({bf16_support()}); batch "
        f"{args.batch_size}, {args.steps} "
        f"timed steps after {args.warmup}, {args.rounds} rounds, variants alternating; median (min–max)"
    )
    for model in args.models:
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        firsts: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                ms, first = time_variant(model, variant, batches, args.warmup, args.steps)
                times[variant.name].append(ms)
                firsts[variant.name].append(first)
        base = times[variants[0].name]
        accs: dict[str, list[float]] = {}
        if args.accuracy:
            for variant in (v for v in variants if v.name in ACCURACY_VARIANTS):
                accs[variant.name] = [
                    accuracy(model, variant, data, seed, args.batch_size)
                    for seed in range(args.first_seed, args.first_seed + args.seeds)
                ]
        report.print(f"\n{model}")
        header = "| variant | ms/step | speed-up vs torch defaults (same round) | first step s |"
        header += " 1-epoch test acc (per seed) |" if accs else ""
        report.print(header)
        report.print("|---" * (header.count("|") - 1) + "|")
        for variant in variants:
            ratios = [b / t for b, t in zip(base, times[variant.name])]
            row = (
                f"| {variant.name} | {_spread(times[variant.name], 1)} | {_spread(ratios, 2)} | "
                f"{_spread(firsts[variant.name], 1)} |"
            )
            if accs:
                accs.setdefault(variant.name, [])
                row += " " + (", ".join(f"{a:.4f}" for a in accs[variant.name]) or "–") + " |"
            report.print(row)
        if accs.get("default + bf16") and accs.get("+ channels_last (default)"):
            report.print("\n" + _bf16_parity(accs["+ channels_last (default)"], accs["default + bf16"]))
    report.write_markdown(args.markdown)


def _bf16_parity(fp32: list[float], bf16: list[float]) -> str:
    """Whether bfloat16's 1-epoch test accuracies fall within float32's spread over the same seeds."""
    low, high = min(fp32), max(fp32)
    inside = sum(low <= a <= high for a in bf16)
    return (
        f"bfloat16 vs float32, 1-epoch test accuracy over {len(bf16)} seeds: mean {statistics.mean(bf16):.4f} vs "
        f"{statistics.mean(fp32):.4f} (difference {statistics.mean(bf16) - statistics.mean(fp32):+.4f}); "
        f"{inside} of {len(bf16)} bfloat16 runs inside float32's range {low:.4f}–{high:.4f}."
    )


if __name__ == "__main__":
    main()
