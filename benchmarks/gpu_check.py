"""GPU check: training throughput and peak GPU memory of the shipped configs, and frozen BatchNorm under DDP.

    bash benchmarks/gpu_check.sh [--steps 50] [--warmup 10] [--markdown PATH]   (or python benchmarks/gpu_check.py ...)

Each run is ``python cli.py fit --config configs/<experiment>.yaml --trainer configs/trainer/<piece>.yaml`` in a
fresh process, as a user starts it (DDP included), on data written in the datasets' real formats (random pixels:
speed does not depend on them, and no network is needed). A probe callback times ``--steps`` training steps after
``--warmup`` untimed ones and records the peak GPU memory of each process. Runs:

- the slides' BatchNorm CNN (Fashion-MNIST, 28 px, batch 128): fp32 and ``bf16-mixed`` on one GPU, and 2-process
  DDP when two GPUs are visible;
- the VGG16 fine-tuning config (CIFAR-10 enlarged to 224 px on the GPU, batch 128): fp32 and ``bf16-mixed``;
- a check that ``ddp`` + ``sync_batchnorm`` + ``FreezeBackbone`` keeps a frozen backbone's BatchNorm statistics
  unchanged (ResNet-18, on as many GPUs as are visible, up to 2); the script fails if they change.

channels_last is not an option of this package's configs, so it is not measured. Without CUDA the script runs a
dry mode on CPU (fp32 only, a few steps, 32 px VGG16, DDP over 2 CPU processes without sync_batchnorm) and says so:
it checks the script and the code paths, not speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from machine import (  # benchmarks/machine.py (on sys.path)
    Report,
    add_markdown_argument,
    cli_env,
    quiet_fit_args,
    timing_fit_args,
)
from torch.nn.modules.batchnorm import _BatchNorm

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


class Probe(pl.Callback):
    """Times training steps ``warmup .. warmup + steps`` and writes, per process, ``rank<r>.json``: seconds, images,
    peak GPU memory and (``check_frozen_bn``) the largest change of the frozen backbone's BatchNorm statistics."""

    def __init__(self, out_dir: str, warmup: int, steps: int, check_frozen_bn: bool = False) -> None:
        self.out_dir, self.warmup, self.steps, self.check_frozen_bn = out_dir, warmup, steps, check_frozen_bn
        self.record: dict[str, Any] = {}
        self._bn_before: dict[str, torch.Tensor] = {}

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _bn_stats(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        backbone = pl_module.net.backbone
        return {
            f"{name}.{buffer}": getattr(module, buffer).detach().float().cpu().clone()
            for name, module in backbone.named_modules()
            if isinstance(module, _BatchNorm)
            for buffer in ("running_mean", "running_var")
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if self.check_frozen_bn:
            self._bn_before = self._bn_stats(pl_module)
            self.record["batchnorm_layers"] = sum(isinstance(m, _BatchNorm) for m in pl_module.net.backbone.modules())
            self.record["sync_batchnorm"] = any(
                isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.net.backbone.modules()
            )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.warmup:
            self._sync()
            self._t0 = time.perf_counter()
            self._images = 0
        if trainer.global_step >= self.warmup:
            self._images += len(batch[0])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self._sync()
            self.record.update(seconds=time.perf_counter() - self._t0, images=self._images, steps=self.steps)
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.update(world_size=trainer.world_size, precision=str(trainer.precision))
        if torch.cuda.is_available():
            self.record["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if self.check_frozen_bn:
            after = self._bn_stats(pl_module)
            self.record["bn_max_change"] = max(
                (float((after[k] - v).abs().max()) for k, v in self._bn_before.items()), default=float("nan")
            )
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record))


# --- data in the real formats -----------------------------------------------------------------------------------


def write_fashion_mnist(folder: Path, n_train: int, n_test: int) -> Path:
    from lightning_cnn.data.mnist import write_idx

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return folder


def write_cifar10(folder: Path, per_batch: int) -> Path:
    from lightning_cnn.data.cifar import write_cifar_batch

    rng = np.random.default_rng(0)
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        write_cifar_batch(root / name, images, rng.integers(0, 10, per_batch).tolist(), "labels")
    return folder


# --- runs ---------------------------------------------------------------------------------------------------------


def _override(folder: Path, probe: dict, freeze: bool) -> Path:
    """A config piece that replaces the experiment's callbacks (EarlyStopping needs validation, which is off)."""
    callbacks = [{"class_path": "gpu_check.Probe", "init_args": probe}]
    if freeze:
        callbacks.append({"class_path": "lightning_cnn.callbacks.FreezeBackbone", "init_args": {"verbose": False}})
    path = folder / "override.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def run(name: str, config: str, pieces: list[str], extra: list[str], args: argparse.Namespace, work: Path,
        freeze: bool = False) -> Optional[list[dict]]:  # fmt: skip
    folder = work / name.replace(" ", "_").replace("/", "-")
    folder.mkdir(parents=True)
    probe = {"out_dir": str(folder), "warmup": args.warmup, "steps": args.steps, "check_frozen_bn": freeze}
    command = [sys.executable, str(REPO / "cli.py"), "fit", "--config", str(CONFIGS / config)]
    for piece in pieces:
        command += ["--trainer", str(CONFIGS / "trainer" / piece)]
    command += [
        "--config", str(_override(folder, probe, freeze)),
        *timing_fit_args(args.warmup, args.steps),
        *quiet_fit_args(folder),
        *extra,
    ]  # fmt: skip
    env = cli_env()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    if result.returncode != 0 or not records:
        print(f"{name}: FAILED (exit {result.returncode})\n{result.stderr[-4000:]}", file=sys.stderr)
        return None
    for record in records:
        record["wall_s"] = wall
    return records


def _row(name: str, records: Optional[list[dict]]) -> str:
    if records is None:
        return f"| {name} | failed | | | | |"
    first = records[0]
    images = sum(r["images"] for r in records)
    seconds = max(r["seconds"] for r in records)
    peak = max((r.get("peak_gpu_mb", float("nan")) for r in records), default=float("nan"))
    return (
        f"| {name} | {first['world_size']} | {first['precision']} | {images / seconds:,.0f} | "
        f"{1000 * seconds / first['steps']:.1f} | {peak:,.0f} |"
    )


def main(argv: Optional[list[str]] = None) -> int:
    report = Report(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 50; dry mode 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; dry mode 1)")
    parser.add_argument("--dry", action="store_true", help="CPU dry mode even when CUDA is available")
    add_markdown_argument(parser)
    args = parser.parse_args(argv)
    gpus = 0 if args.dry else torch.cuda.device_count()
    dry = gpus == 0
    args.steps = args.steps or (2 if dry else 50)
    args.warmup = args.warmup or (1 if dry else 10)

    print(f"Python {platform.python_version()}, torch {torch.__version__}, Lightning {pl.__version__}")
    if dry:
        report.print(
            "DRY MODE on CPU (no CUDA device, or --dry; tiny sizes, a few steps): checks the script and the code "
            "paths; the figures below say nothing about GPU speed."
        )
    else:
        report.print(
            f"{gpus} × {torch.cuda.get_device_name(0)}; {args.warmup} untimed + {args.steps} timed steps per run"
        )

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        batch = 16 if dry else 128
        steps_needed = (args.warmup + args.steps + 2) * batch * 2  # enough for one epoch on 2 processes
        fashion = write_fashion_mnist(work / "fashion", int(steps_needed / 0.8) + 1, 256)
        cifar = write_cifar10(work / "cifar", max(64, steps_needed // 5 + 1))
        fm = [
            "--data.init_args.data_dir",
            str(fashion),
            "--data.init_args.download",
            "false",
            "--data.init_args.batch_size",
            str(batch),
        ]
        vgg_size = "32" if dry else "224"
        vgg = ["--data.init_args.data_dir", str(cifar), "--data.init_args.download", "false",
               "--data.init_args.batch_size", str(batch), "--data.init_args.image_size", vgg_size,
               "--model.init_args.net.init_args.weights", "null"]  # fmt: skip
        device = ["--trainer.accelerator", "cpu"] if dry else ["--trainer.accelerator", "gpu"]
        rows: list[tuple[str, Optional[list[dict]]]] = []
        bn_cnn, vgg16 = "bn_cnn_fashion_mnist.yaml", "vgg16_finetune_cifar10.yaml"
        rows.append(("BN CNN, fp32", run("bn_fp32", bn_cnn, ["single_device.yaml"], fm + device, args, work)))
        if not dry:
            rows.append(("BN CNN, bf16-mixed", run("bn_bf16", bn_cnn, ["single_device.yaml", "bf16.yaml"], fm + device,
                                                   args, work)))  # fmt: skip
        if gpus >= 2:
            rows.append(("BN CNN, fp32, DDP 2 GPUs", run("bn_ddp", bn_cnn, ["ddp.yaml"], fm + ["--trainer.devices", "2"],
                                                         args, work)))  # fmt: skip
        elif not dry:
            report.print("DDP with 2 processes: skipped (one GPU visible).")
        rows.append((f"VGG16 {vgg_size} px, fp32", run("vgg_fp32", vgg16, ["single_device.yaml"], vgg + device, args,
                                                       work)))  # fmt: skip
        if not dry:
            rows.append((f"VGG16 {vgg_size} px, bf16-mixed", run("vgg_bf16", vgg16, ["single_device.yaml", "bf16.yaml"],
                                                                  vgg + device, args, work)))  # fmt: skip

        # Frozen BatchNorm under DDP: ResNet-18 (BatchNorm throughout), FreezeBackbone, sync_batchnorm on GPUs.
        resnet = ["--model.init_args.net.init_args.arch", "resnet18", "--data.init_args.image_size", "64",
                  "--data.init_args.data_dir", str(cifar), "--data.init_args.download", "false",
                  "--data.init_args.batch_size", str(batch), "--model.init_args.net.init_args.weights", "null"]  # fmt: skip
        if dry:
            bn_pieces, bn_extra = ["ddp_cpu.yaml"], []
        else:
            bn_pieces, bn_extra = ["ddp.yaml"], ["--trainer.devices", str(min(2, gpus))]
        frozen = run("frozen_bn", vgg16, bn_pieces, resnet + bn_extra, args, work, freeze=True)
        rows.append(("ResNet-18 frozen backbone, DDP", frozen))

    report.print("\n| run | processes | precision | images/s | ms/step | peak GPU memory MB (per process) |")
    report.print("|---|---|---|---|---|---|")
    for name, records in rows:
        report.print(_row(name, records))
    failed = [name for name, records in rows if records is None]
    if frozen is not None:
        change = max(r["bn_max_change"] for r in frozen)
        sync = all(r["sync_batchnorm"] for r in frozen)
        layers = frozen[0]["batchnorm_layers"]
        ok = change == 0.0 and layers > 0
        report.print(
            f"\nFrozen BatchNorm statistics under DDP ({frozen[0]['world_size']} process(es), sync_batchnorm "
            f"{'on' if sync else 'off'}) + FreezeBackbone: {layers} layers, largest change {change:g} — "
            f"{'unchanged' if ok else 'CHANGED'}"
        )
        if not ok:
            failed.append("frozen BatchNorm statistics changed")
    gpu = None if dry else f"{gpus} × {torch.cuda.get_device_name(0)}"
    report.write_markdown(args.markdown, gpu=gpu)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
