"""Host memory and loader time per batch of CIFAR-10 enlarged for VGG16, images resized when read vs per batch.

CIFAR-10 at ``image_size: 224`` (``configs/vgg16_finetune_cifar10.yaml``): before, every image was resized when the
data was read and held at 224×224; now the images stay at their stored 32×32 and each batch is enlarged on the
training device.

    python benchmarks/memory.py [--image-size 224] [--batches 20] [--rounds 1] [--data-dir DIR] [--accuracy]
                                [--markdown PATH]

The data is a CIFAR-10 folder of the real size in the real format (50,000 training images in five pickled
``data_batch_N`` files, 10,000 in ``test_batch``; random pixels and labels), written once into a temporary folder, or
into ``--data-dir`` (a CIFAR-10 folder already there, real or not, is used as it is). Each side runs in a fresh
process, one after the other, so that its peak RSS is its own: it builds ``CIFAR10DataModule`` as
``configs/vgg16_finetune_cifar10.yaml`` does (``normalize_from_weights: VGG16_Weights.IMAGENET1K_V1``, batch 128, no
workers), calls ``setup("fit")`` and pulls ``--batches`` timed training batches (after two untimed ones) through
``train_dataloader()`` and ``on_after_batch_transfer`` on ``--device``, checking each is ``(128, 3, S, S)``.

* "in memory (before)" is a subclass defined here whose ``_prepare`` resizes every split to ``image_size`` when it
  is read — what ``ImageDataModule._prepare`` always did before images were kept at their stored size.
* "per batch (now)" is ``CIFAR10DataModule`` as it is.

The table gives the bytes of the image tensors held (train + val + test), the peak RSS (``ru_maxrss``: it includes the
transient copies ``setup`` makes while it splits the arrays), the RSS after the batches, and the milliseconds per
batch (loader + device step: median and range over the timed batches of all rounds). The first batch of both sides is
compared: the per-batch resize is meant to give the same floats as resizing the uint8 images first.

``--accuracy`` adds a short real-data check: LeNet (the slides', with their L2 on both convolutions) trained for one
epoch on a seeded subset of Fashion-MNIST at 64×64 (Debian's ``dataset-fashion-mnist``, found by the datamodule) and
tested on the 10,000 test images, once per side, each in its own process: the test accuracies should be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from machine import Report, add_markdown_argument, cpu_name  # benchmarks/machine.py (on sys.path)
from torch import Tensor

from lightning_cnn.data import CIFAR10DataModule, FashionMNISTDataModule
from lightning_cnn.data.cifar import write_cifar_batch
from lightning_cnn.data.dataset import ImageArrays
from lightning_cnn.preprocessing import resize_uint8

# The real CIFAR-10 python archive's layout and sizes.
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_IMAGES_PER_FILE = 10_000
# configs/vgg16_finetune_cifar10.yaml
VGG16_WEIGHTS = "VGG16_Weights.IMAGENET1K_V1"
BATCH_SIZE = 128
# Untimed batches first: allocator and first-call overheads.
WARMUP_BATCHES = 2
# The accuracy check: small enough for a few minutes on two CPU cores, large enough for a non-trivial accuracy.
ACCURACY_IMAGE_SIZE = 64
ACCURACY_TRAIN_SIZE = 6000
ACCURACY_SEED = 0
SIDES = {"before": "in memory (before)", "now": "per batch (now)"}
_RESULT_PREFIX = "RESULT "
_MB = 1e6


class _ResizeWhenRead:
    """The previous behaviour: every split resized to ``image_size`` when it is read, so memory holds it at that
    size (the base ``_prepare`` now resizes only when it shrinks the images)."""

    image_size: tuple[int, int]

    def _prepare(self, split: ImageArrays) -> tuple[Tensor, Tensor]:
        images, labels = super()._prepare(split)  # type: ignore[misc]
        return resize_uint8(images, self.image_size), labels


class _CIFAR10Before(_ResizeWhenRead, CIFAR10DataModule):
    pass


class _FashionMNISTBefore(_ResizeWhenRead, FashionMNISTDataModule):
    pass


def write_random_cifar10(data_dir: Path) -> str:
    """A CIFAR-10 folder of the real size under ``data_dir`` unless one is there; says which."""
    folder = data_dir / CIFAR_FOLDER
    files = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE)
    if all((folder / name).is_file() for name in files):
        return "the CIFAR-10 folder already there"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in files:
        images = rng.integers(0, 256, (CIFAR_IMAGES_PER_FILE, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, CIFAR_IMAGES_PER_FILE)
        write_cifar_batch(folder / name, images, labels, "labels")
    return "random CIFAR-10 pixels in the real format"  # the folder: --data-dir, else a temporary one


def _rss_now() -> Optional[float]:
    """Resident set size in bytes now (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_side(side: str, data_dir: str, image_size: int, batches: int, device: str, batch_file: str) -> dict:
    """One side, in this process: setup, then ``batches`` timed batches; saves the first batch to ``batch_file``."""
    cls = _CIFAR10Before if side == "before" else CIFAR10DataModule
    dm = cls(
        data_dir=data_dir,
        download=False,
        image_size=image_size,
        normalize_from_weights=VGG16_WEIGHTS,
        batch_size=BATCH_SIZE,
        num_workers=0,
    )
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    held = sum(d.images.nbytes for d in (dm.train_set, dm.val_set, dm.test_set) if d is not None)
    stored = tuple(dm.train_set.images.shape[1:])
    target = torch.device(device)
    expected = (BATCH_SIZE, 3, image_size, image_size)
    times: list[float] = []
    loader = iter(dm.train_dataloader())
    for i in range(WARMUP_BATCHES + batches):
        _sync(target)
        start = time.perf_counter()
        images, labels = next(loader)
        images, labels = dm.on_after_batch_transfer((images.to(target), labels.to(target)), 0)
        _sync(target)
        elapsed = time.perf_counter() - start
        if tuple(images.shape) != expected:
            raise RuntimeError(f"{SIDES[side]}: batch {i} is {tuple(images.shape)}, expected {expected}")
        if i == 0:
            torch.save(images.cpu(), batch_file)
        if i >= WARMUP_BATCHES:
            times.append(elapsed * 1e3)
    return {"held": held, "stored": stored, "peak": _peak_rss(), "rss": _rss_now(), "setup_s": setup_s, "ms": times}


def accuracy_side(side: str) -> dict:
    """One epoch of LeNet on a seeded Fashion-MNIST subset at 64×64, then the test set, in this process."""
    import pytorch_lightning as pl

    from lightning_cnn import ImageClassifier
    from lightning_cnn.models import LeNet
    from lightning_cnn.regularization import L1L2, LayerRegularizers

    pl.seed_everything(ACCURACY_SEED, verbose=False)
    cls = _FashionMNISTBefore if side == "before" else FashionMNISTDataModule
    dm = cls(
        download=False,
        image_size=ACCURACY_IMAGE_SIZE,
        train_size=ACCURACY_TRAIN_SIZE,
        batch_size=BATCH_SIZE,
        num_workers=0,
        seed=ACCURACY_SEED,
    )
    l2 = LayerRegularizers(kernel=L1L2(l2=1e-4))  # the slides' kernel_regularizer=l2(1e-4) on both convs
    net = LeNet(input_size=dm.image_size, layer_regularizers={"conv1": l2, "conv2": l2})
    model = ImageClassifier(net, num_classes=dm.num_classes, input_shape=dm.dims)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    val_acc = float(trainer.callback_metrics["val/acc"])
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    return {
        "val_acc": val_acc,
        "test_acc": float(test["test/acc"]),
        "test_loss": float(test["test/loss"]),
        "weights_sha256": _sha256(model.state_dict().values()),
        "seconds": time.perf_counter() - start,
        "data_from": str(dm.locate()),
    }


def _sha256(tensors: Any) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _in_fresh_process(job: dict[str, Any]) -> dict:
    """Run ``job`` in a new Python process (its own peak RSS) and return its result."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_job", json.dumps(job)], capture_output=True, text=True
    )
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    code = done.returncode
    killed = " (killed: out of memory?)" if code in (-9, 137) else ""
    raise RuntimeError(f"{job['kind']} {job['side']!r} exited with status {code}{killed}:\n{tail}")


def _run_job(job: dict[str, Any]) -> None:
    warnings.filterwarnings("ignore")  # Lightning's advice about worker counts etc.
    if job["kind"] == "memory":
        result = memory_side(
            job["side"], job["data_dir"], job["image_size"], job["batches"], job["device"], job["batch_file"]
        )
    else:
        result = accuracy_side(job["side"])
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def _mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / _MB:,.0f}"


def main(argv: Optional[list[str]] = None) -> None:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224, help="side the images are enlarged to (VGG16: 224)")
    parser.add_argument("--batches", type=int, default=20, help="timed training batches per side and round")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per side, sides alternating")
    parser.add_argument("--data-dir", default=None, help="where the CIFAR-10 folder is (default: a temporary folder)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where batches go and are enlarged"
    )
    parser.add_argument("--accuracy", action="store_true", help="also the Fashion-MNIST accuracy check (~2 min)")
    add_markdown_argument(parser)
    parser.add_argument("--_job", help=argparse.SUPPRESS)  # internal: one side, run in a fresh process
    args = parser.parse_args(argv)
    if args._job:
        _run_job(json.loads(args._job))
        return
    if args.image_size <= 32:
        parser.error(f"--image-size {args.image_size}: use a side above CIFAR-10's 32, which is what is measured.")

    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memory_benchmark_") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        source = write_random_cifar10(data_dir)
        memory: dict[str, list[dict]] = {side: [] for side in SIDES}
        first_batch: dict[str, Tensor] = {}
        load_before = os.getloadavg()[0]
        for _ in range(args.rounds):
            for side in SIDES:  # one after the other: the "before" side alone holds ~9 GB at 224
                batch_file = str(Path(tmp) / f"first_batch_{side}.pt")
                job = {"kind": "memory", "side": side, "data_dir": str(data_dir), "image_size": args.image_size,
                       "batches": args.batches, "device": args.device, "batch_file": batch_file}  # fmt: skip
                memory[side].append(_in_fresh_process(job))
                first_batch.setdefault(side, torch.load(batch_file))
        load_after = os.getloadavg()[0]
        accuracy = (
            {side: _in_fresh_process({"kind": "accuracy", "side": side}) for side in SIDES} if args.accuracy else {}
        )

    size = args.image_size
    report.print(
        f"\nCIFAR-10 for VGG16 at {size}×{size} ({source}): 45,000 train + 5,000 val + 10,000 test images, batch "
        f"{BATCH_SIZE}, no loader workers, device step on {args.device}; {args.batches} timed batches after "
        f"{WARMUP_BATCHES} untimed, {args.rounds} round(s), each side in a fresh process, sides run one after the other"
    )
    report.print(
        '"in memory (before)" reproduces the previous ImageDataModule: a subclass whose _prepare resizes every split '
        'to image_size when it is read (resize_uint8); "per batch (now)" is CIFAR10DataModule as it is.'
    )
    report.print(f"Python {platform.python_version()} on {platform.platform()}")
    report.print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}; 1-min load average {load_before:.2f} before, {load_after:.2f} after"
    )
    header = (
        f"| {'side':<18} | {'stored as':>11} | {'in-memory images MB':>19} | {'peak RSS MB':>11} | "
        f"{'RSS after batches MB':>20} | {'setup s':>7} | {'ms/batch (median)':>17} | {'range ms':>13} |"
    )
    report.print(header)
    report.print("|" + "|".join("-" * (len(cell) + 2) for cell in header.strip("| ").split(" | ")) + "|")
    for side, label in SIDES.items():
        runs = memory[side]
        times = [t for run in runs for t in run["ms"]]
        rss = [run["rss"] for run in runs if run["rss"] is not None]
        stored = "×".join(str(v) for v in runs[0]["stored"])
        spread = f"{min(times):,.1f}–{max(times):,.1f}"
        report.print(
            f"| {label:<18} | {stored:>11} | {_mb(runs[0]['held']):>19} | {_mb(max(r['peak'] for r in runs)):>11} | "
            f"{_mb(max(rss) if rss else None):>20} | {statistics.median(r['setup_s'] for r in runs):>7.1f} | "
            f"{statistics.median(times):>17,.1f} | {spread:>13} |"
        )
    before, now = first_batch["before"], first_batch["now"]
    if torch.equal(before, now):
        report.print("First training batch: bit-identical on both sides.")
    else:
        report.print(f"First training batch: differs, max |difference| {(before - now).abs().max().item():.3g}.")

    if accuracy:
        report.print(
            f"\nAccuracy check: Fashion-MNIST from {accuracy['now']['data_from']} at {ACCURACY_IMAGE_SIZE}×"
            f"{ACCURACY_IMAGE_SIZE}, the slides' LeNet, seed {ACCURACY_SEED}, train_size {ACCURACY_TRAIN_SIZE}, "
            "1 epoch, deterministic, CPU; each side in a fresh process"
        )
        for side, label in SIDES.items():
            r = accuracy[side]
            report.print(
                f"{label}: test acc {r['test_acc']:.6f}, test loss {r['test_loss']:.6f}, val acc {r['val_acc']:.6f} "
                f"({r['seconds']:.0f} s)"
            )
        a, b = accuracy["before"], accuracy["now"]
        if a == {**b, "seconds": a["seconds"]}:
            report.print("Test accuracy equal: yes (test loss, val accuracy and trained weights equal too)")
        else:
            same = "yes" if a["test_acc"] == b["test_acc"] else "no"
            report.print(
                f"Test accuracy equal: {same}; differences (now - before): test acc "
                f"{b['test_acc'] - a['test_acc']:+.3g}, test loss {b['test_loss'] - a['test_loss']:+.3g}, val acc "
                f"{b['val_acc'] - a['val_acc']:+.3g}; trained weights "
                f"{'equal' if a['weights_sha256'] == b['weights_sha256'] else 'differ'}"
            )
    report.print(f"Wall time: {time.perf_counter() - wall:.0f} s")
    report.write_markdown(args.markdown, gpu=torch.cuda.get_device_name(args.device) if "cuda" in args.device else None)


if __name__ == "__main__":
    main()
