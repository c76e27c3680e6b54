"""Inference throughput of an exported classifier on this machine's CPU: PyTorch eager vs TorchScript vs onnxruntime,
at batch 1 (one request at a time: per-call overhead) and batch 256 (bulk scoring: kernel speed).

    python benchmarks/inference.py [--ckpt_path runs/…/last.ckpt] [--rounds 5] [--seconds 1.5] [--markdown PATH]

Without ``--ckpt_path`` it first makes a checkpoint with a smoke fit of ``configs/lenet_fashion_mnist.yaml`` (a few
batches; speed does not depend on how trained the weights are). The checkpoint is exported to ONNX and TorchScript
in a temporary folder, and all three sides run the same function — :class:`~lightning_cnn.export.DeployableClassifier`:
pixels in [0, 1] in, normalization, network, probabilities out — on the same inputs: the first Fashion-MNIST test
images (Debian's ``dataset-fashion-mnist``) resized to the checkpoint's input size, or random pixels without them.
Eager and TorchScript run under ``torch.inference_mode()``; every side uses its default thread count.

Each measurement calls a side back to back for ``--seconds`` after untimed warm-up calls and reports images/s.
Each round measures every side once per batch size, in an order rotated from round to round so that no side always
runs first or last; the table gives the median and the range over rounds, and the ratio to eager, taken within each
round and then the median over rounds: a shared machine's load moves throughput by ±20% between rounds, far more
than it moves the ratio within one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from machine import Report, add_markdown_argument, cpu_name  # benchmarks/machine.py (on sys.path)
from torch import Tensor, nn

from lightning_cnn.data.mnist import read_idx, write_idx
from lightning_cnn.export import export, load_deployable
from lightning_cnn.preprocessing import Preprocessing

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO_ROOT / "configs" / "lenet_fashion_mnist.yaml"
SMOKE_TRAINER = REPO_ROOT / "configs" / "trainer" / "smoke.yaml"
# Debian's dataset-fashion-mnist package (the datamodule's own fallback folder).
FASHION_MNIST_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
BATCH_SIZES = (1, 256)
SIDES = ("eager", "torchscript", "onnxruntime")
# Untimed calls before each measurement: TorchScript's profiling executor specializes the graph over its first
# calls, and every side refills caches the other sides evicted.
_WARMUP_CALLS = 3
# Random stand-in data for a fit without the real Fashion-MNIST: enough for the smoke trainer's few batches.
_RANDOM_TRAIN, _RANDOM_TEST = 1024, 256

Runner = Callable[[], object]


def _smoke_checkpoint(folder: Path) -> Path:
    """``last.ckpt`` of a smoke fit of the LeNet config in ``folder`` (real Fashion-MNIST, else random IDX files)."""
    from lightning_cnn.cli import CNNCLI

    data: list[str] = []
    if not FASHION_MNIST_TEST_IMAGES.is_file():
        data_dir = folder / "random_fashion_mnist"
        data_dir.mkdir()
        rng = np.random.default_rng(0)
        for split, n in (("train", _RANDOM_TRAIN), ("t10k", _RANDOM_TEST)):
            write_idx(data_dir / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(data_dir / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
        data = ["--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "false"]
    previous = Path.cwd()
    os.chdir(folder)  # the config's loggers write into ./runs/...
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the model summary would bury the table
            cli = CNNCLI(
                args=["fit", "--config", str(SMOKE_CONFIG), "--trainer", str(SMOKE_TRAINER),
                      "--test_after_fit", "false", *data]
            )  # fmt: skip
    finally:
        os.chdir(previous)
    return folder / cli.trainer.log_dir / "checkpoints" / "last.ckpt"


def _pixels(preprocessing: Preprocessing, n: int) -> tuple[Tensor, str]:
    """``n`` inputs as the exported model takes them (float pixels in [0, 1]), and where they came from."""
    if FASHION_MNIST_TEST_IMAGES.is_file() and preprocessing.channels == 1:
        images, source = read_idx(FASHION_MNIST_TEST_IMAGES)[:n], "Fashion-MNIST test images"
    else:
        shape = (n, *preprocessing.image_size, preprocessing.channels)
        images, source = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), "random pixels"
    return preprocessing.from_array(images).float() / 255, source


def _runners(
    model: nn.Module, checkpoint: Path, folder: Path, pixels: Tensor
) -> tuple[dict[str, dict[int, Runner]], str]:
    """One zero-argument call per side and batch size, and a line on the ONNX runtime."""
    with contextlib.redirect_stdout(io.StringIO()):  # export's own "Exported … (checked …)" lines
        torchscript_path = export(checkpoint, "torchscript", folder / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    batches = {b: pixels[:b].contiguous() for b in BATCH_SIZES}
    runners: dict[str, dict[int, Runner]] = {
        "eager": {b: (lambda x=x: model(x)) for b, x in batches.items()},
        "torchscript": {b: (lambda x=x: scripted(x)) for b, x in batches.items()},
    }
    try:
        import onnxruntime
    except ImportError:
        return runners, "onnxruntime not installed (pip install -e '.[export]'): its rows are left out"
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_path = export(checkpoint, "onnx", folder / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    arrays = {b: x.numpy() for b, x in batches.items()}  # converted once: the conversion is not the runtime's cost
    runners["onnxruntime"] = {b: (lambda a=a: session.run(None, {"pixels": a})) for b, a in arrays.items()}
    return runners, f"onnxruntime {onnxruntime.__version__} (default session threads)"


def _images_per_second(run: Runner, batch: int, seconds: float) -> float:
    for _ in range(_WARMUP_CALLS):
        run()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch / elapsed


def main(argv: Optional[list[str]] = None) -> None:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to export (default: a smoke fit of LeNet)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per side and batch size")
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per measurement")
    add_markdown_argument(parser)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # Lightning's advice during the smoke fit would bury the table

    with tempfile.TemporaryDirectory(prefix="inference_benchmark_") as tmp:
        folder = Path(tmp)
        checkpoint = Path(args.ckpt_path) if args.ckpt_path else _smoke_checkpoint(folder)
        model, preprocessing = load_deployable(checkpoint)
        pixels, source = _pixels(preprocessing, max(BATCH_SIZES))
        runners, runtime_line = _runners(model, checkpoint, folder, pixels)
        sides = [side for side in SIDES if side in runners]

        load_before = os.getloadavg()[0]
        results = {(side, b): [] for side in sides for b in BATCH_SIZES}
        with torch.inference_mode():
            for r in range(args.rounds):
                order = sides[r % len(sides) :] + sides[: r % len(sides)]
                for b in BATCH_SIZES:
                    for side in order:
                        results[side, b].append(_images_per_second(runners[side][b], b, args.seconds))

    report.print(
        f"\n{type(model.net).__name__} from {checkpoint.name}, input {(preprocessing.channels, *preprocessing.image_size)}"
        f", {source}; {args.rounds} rounds of {args.seconds:g} s per side and batch (order rotated per round)"
    )
    # Other processes on the cores matter most to PyTorch's OpenMP threads: a parallel region waits for its slowest
    # thread, and a thread that shares its core with another process can make a small batch tens of times slower.
    load = f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    report.print(
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}; {runtime_line}; {load}"
    )
    report.print(
        f"| {'side':<12} | {'batch':>5} | {'images/s (median)':>17} | {'range over rounds':>19} | {'× eager (median)':>16} |"
    )
    report.print(f"|{'-' * 14}|{'-' * 7}|{'-' * 19}|{'-' * 21}|{'-' * 18}|")
    for b in BATCH_SIZES:
        eager = results["eager", b]
        for side in sides:
            values = results[side, b]
            # Paired with eager's measurement of the same round: minutes apart at most, under the same load.
            ratio = statistics.median(v / e for v, e in zip(values, eager))
            spread = f"{min(values):,.0f}–{max(values):,.0f}"
            report.print(
                f"| {side:<12} | {b:>5} | {statistics.median(values):>17,.0f} | {spread:>19} | {ratio:>16.2f} |"
            )

    report.write_markdown(args.markdown)


if __name__ == "__main__":
    main()
