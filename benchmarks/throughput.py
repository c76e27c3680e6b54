"""Training throughput on Fashion-MNIST with the slides' LeNet: plain PyTorch vs Lightning ``fit``, with and without
the slides' Keras-style augmentation (per sample in DataLoader workers, and batched on the device).

    python benchmarks/throughput.py [--batch-size 128] [--steps 300] [--warmup 30] [--rounds 3] [--device cpu]
                                    [--markdown PATH]

Every run uses the same model (LeNet with the slides' L2 penalties, Adam), batch size, data (the datamodule's
loader) and number of steps; the first ``--warmup`` steps (worker start-up, allocator, first-call overheads) are
not timed. Each mode runs ``--rounds`` times, interleaved; each ratio is the median over rounds of that round's
run divided by the same round's raw loop (best and median images/s are printed beside it). ``fit`` runs without progress bar, logger, checkpointing and validation — what is left is
Lightning's loop and the module's own training-step bookkeeping, which a real run pays too. The last line is
``fit/raw no-aug: X.XX  fit/raw keras-aug: Y.YY`` (Y: the faster augmented path) and Lightning's fixed cost per
step in ms (fit no-aug minus raw no-aug, same round). The raw loop lays the network out as ``ImageClassifier`` does
on that device (channels_last on a CPU), so the ratio is about the loop, not the layout.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from machine import Report, add_markdown_argument  # benchmarks/machine.py (this script's folder is on sys.path)

from lightning_cnn import ImageClassifier
from lightning_cnn.augmentation import SLIDES_IMAGE_DATA_GENERATOR, KerasAugmentation
from lightning_cnn.data import FashionMNISTDataModule
from lightning_cnn.models import LeNet
from lightning_cnn.regularization import L1L2, LayerRegularizers, regularization_loss

MODES = ("raw no-aug", "fit no-aug", "fit per-sample aug", "fit batched aug")


def _net() -> LeNet:
    torch.manual_seed(0)
    l2 = LayerRegularizers(kernel=L1L2(l2=1e-4))  # the slides' kernel_regularizer=l2(1e-4) on both convs
    return LeNet(layer_regularizers={"conv1": l2, "conv2": l2})


def _datamodule(batch_size: int, augmentation: KerasAugmentation | None) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(batch_size=batch_size, val_split=0, augmentation=augmentation, download=False)
    dm.prepare_data()
    return dm


def raw_loop(batch_size: int, warmup: int, steps: int, device: torch.device) -> float:
    """A plain PyTorch training loop over the same loader; images/s over the timed steps."""
    dm = _datamodule(batch_size, None)
    dm.setup("fit")
    net = _net().to(device)
    channels_last = device.type == "cpu"  # the layout ImageClassifier(memory_format="auto") picks on this device
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    done, start = 0, None
    while True:
        for x, y in dm.train_dataloader():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), y) + regularization_loss(net)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            elif done == warmup + steps:
                _sync(device)
                return steps * batch_size / (time.perf_counter() - start)


class _Timer(pl.Callback):
    """Times ``steps`` whole iterations (fetch + transfer + step) after ``warmup`` untimed ones."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.elapsed = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        done = trainer.global_step
        if done == self.warmup:
            _sync(trainer.strategy.root_device)
            self.start = time.perf_counter()
        elif done == self.warmup + self.steps:
            _sync(trainer.strategy.root_device)
            self.elapsed = time.perf_counter() - self.start


def lightning_fit(batch_size: int, warmup: int, steps: int, device: torch.device, augmentation=None) -> float:  # noqa: ANN001
    """``Trainer.fit`` on the same model and data; images/s over the timed steps."""
    dm = _datamodule(batch_size, augmentation)
    model = ImageClassifier(_net())
    timer = _Timer(warmup, steps)
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return steps * batch_size / timer.elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Optional[list[str]] = None) -> None:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before timing")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode (best and median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_markdown_argument(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")  # Lightning's advice about worker counts etc. would bury the table

    runs: dict[str, Callable[[], float]] = {
        "raw no-aug": lambda: raw_loop(args.batch_size, args.warmup, args.steps, device),
        "fit no-aug": lambda: lightning_fit(args.batch_size, args.warmup, args.steps, device),
        "fit per-sample aug": lambda: lightning_fit(
            args.batch_size,
            args.warmup,
            args.steps,
            device,
            KerasAugmentation(**SLIDES_IMAGE_DATA_GENERATOR, mode="per_sample", seed=0),
        ),
        "fit batched aug": lambda: lightning_fit(
            args.batch_size,
            args.warmup,
            args.steps,
            device,
            KerasAugmentation(**SLIDES_IMAGE_DATA_GENERATOR, mode="batched", seed=0),
        ),
    }
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(runs[mode]())
    # Ratios and costs pair each run with the raw loop of the same round (minutes apart at most), then take the
    # median over rounds: other work on a shared machine moves throughput by +-20% between rounds, far more than it
    # moves the ratio within a round.
    raw_runs = results["raw no-aug"]

    def ms_per_step(images_per_s: float) -> float:
        return 1000 * args.batch_size / images_per_s

    def spread(values: list[float], digits: int) -> str:
        return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"

    workers = min(4, torch.multiprocessing.cpu_count())
    report.print(
        f"\nFashion-MNIST, LeNet, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"{args.rounds} rounds, device {device}, torch threads {torch.get_num_threads()}, per-sample workers "
        f"{workers}; figures: median over rounds (min–max)"
    )
    report.print(
        "| mode | images/s | ms/step | ratio to raw no-aug (same round) | ms/step over raw no-aug (same round) |"
    )
    report.print("|---|---|---|---|---|")
    ratios = {}
    for mode in MODES:
        ratios[mode] = [v / r for v, r in zip(results[mode], raw_runs)]
        extra = [ms_per_step(v) - ms_per_step(r) for v, r in zip(results[mode], raw_runs)]
        steps = [ms_per_step(v) for v in results[mode]]
        report.print(
            f"| {mode} | {spread(results[mode], 0)} | {spread(steps, 2)} | {spread(ratios[mode], 2)} | "
            f"{spread(extra, 2)} |"
        )
    best_aug = max(("fit per-sample aug", "fit batched aug"), key=lambda m: statistics.median(ratios[m]))
    report.print(
        f"fit/raw no-aug: {statistics.median(ratios['fit no-aug']):.2f}  fit/raw keras-aug: "
        f"{statistics.median(ratios[best_aug]):.2f} ({best_aug})  Lightning's fixed cost per step (fit no-aug - raw "
        f"no-aug): {statistics.median(ms_per_step(v) - ms_per_step(r) for v, r in zip(results['fit no-aug'], raw_runs)):.2f} ms"
    )
    report.write_markdown(args.markdown, gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)


if __name__ == "__main__":
    main()
