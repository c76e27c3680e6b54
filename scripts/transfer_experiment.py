"""Transfer learning offline, on real data: pretrain, then fine-tune on a new task five ways, from scratch once.

    python scripts/transfer_experiment.py                  # the docs' figures (about 35 minutes on 2 CPU cores)
    python scripts/transfer_experiment.py --quick --out transfer-check   # every run shortened: a check

1. ``configs/transfer/pretrain_fashion_0to4.yaml``: the slides' BatchNorm/Dropout CNN on Fashion-MNIST classes
   0–4 (the source task), all their training images;
2. classes 5–9 (the target task) from 200 labelled images, the conv part loaded from step 1's best checkpoint
   (FreezeBackbone), a new dense head:

   - ``finetune_fashion_5to9.yaml``: conv part frozen for the whole run;
   - ``finetune_augment_fashion_5to9.yaml``: the same with the slides' ImageDataGenerator augmentation;
   - ``finetune_unfreeze_fashion_5to9.yaml``: frozen, then unfrozen at epoch 10 at a tenth of the head's LR;
   - ``finetune_full_fashion_5to9.yaml``: everything trainable from the first step (full fine-tuning);

3. ``scratch_fashion_5to9.yaml``: the same network, data, seed, optimizer and epochs, from random weights.

The frozen, unfreezing and full fine-tuning runs carry a SourceTaskMonitor
(``configs/callbacks/source_monitor_fashion_0to4.yaml``): after every epoch, the source task's test accuracy of
the current conv part under step 1's own head — what the network forgets of classes 0–4 while it learns 5–9.

Prints two markdown tables (transfer and augmentation; forgetting) and writes them to ``transfer_results.md``, with
``forgetting.png`` (source and target accuracy per epoch for each strategy), into ``--out`` (default:
``docs/results``, which the docs show, with a line naming the command, date and machine); the runs log into ``runs/<config>/version_N`` as usual. ``--quick`` shortens every run (pretraining: one
epoch on 4,000 images; fine-tuning: 3 epochs, unfreezing at 1; a fifth of the target test set; 250 source test
images) for a check of the whole pipeline. Fashion-MNIST is read from ``data.data_dir``, Debian's
``dataset-fashion-mnist`` package, or downloaded. Other arguments are passed to every run, e.g.
``--trainer.accelerator cpu`` (``--data.init_args.data_dir``/``download`` to the monitor's datamodule too).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from pytorch_lightning.loggers import CSVLogger

from lightning_cnn.callbacks import FreezeBackbone, SourceTaskMonitor
from lightning_cnn.cli import CNNCLI
from lightning_cnn.paths import written_whole

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from machine import cpu_name  # noqa: E402  (the benchmarks' machine line; that folder is not a package)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "transfer"
MONITOR = CONFIGS.parent / "callbacks" / "source_monitor_fashion_0to4.yaml"
RESULTS_FILE = "transfer_results.md"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results"
PLOT_FILE = "forgetting.png"

# --quick: every run shortened; a check of the whole pipeline, not the README's numbers. The pretraining still takes
# 125 steps (4,000 images, batches of 32): with fewer, its conv part was too weak to beat training from scratch.
QUICK_PRETRAIN = [
    "--trainer.max_epochs", "1", "--data.init_args.train_size", "4000", "--data.init_args.batch_size", "32",
    "--data.init_args.val_split", "500",
]  # fmt: skip
QUICK_FINETUNE = ["--trainer.max_epochs", "3"]
QUICK_UNFREEZE = ["--trainer.callbacks.init_args.unfreeze_at_epoch", "1"]  # of the 3 epochs
QUICK_TEST = ["--trainer.limit_test_batches", "0.2"]  # a fifth of the 5,000 test images (the same fifth every run)
# One batch of 250 of the source task's test images (always the same: the split is not shuffled).
QUICK_MONITOR = ["--trainer.callbacks.init_args.data.init_args.batch_size", "250"]
QUICK_MONITOR += ["--trainer.callbacks.init_args.limit_batches", "1"]
# Data options of the runs that the monitor's own datamodule (the source task's) takes too.
SHARED_DATA_OPTIONS = ("data_dir", "download")


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run of the experiment."""

    config: str
    label: str
    pretrained: bool = True  # conv part loaded from the pretrain checkpoint
    monitored: bool = False  # carries the SourceTaskMonitor
    quick: tuple[str, ...] = ()  # extra options under --quick (before the monitor is appended)


ARMS = {
    "frozen": Arm("finetune_fashion_5to9.yaml", "conv part frozen", monitored=True),
    "augmented": Arm("finetune_augment_fashion_5to9.yaml", "conv part frozen, with augmentation"),
    "unfreeze": Arm(
        "finetune_unfreeze_fashion_5to9.yaml",
        "frozen, unfrozen at epoch {unfreeze} (LR x{ratio:g})",
        monitored=True,
        quick=tuple(QUICK_UNFREEZE),
    ),
    "full": Arm("finetune_full_fashion_5to9.yaml", "full fine-tuning (nothing frozen)", monitored=True),
    "scratch": Arm("scratch_fashion_5to9.yaml", "from scratch", pretrained=False),
}


@dataclass
class RunResult:
    """What one run measured."""

    label: str
    test_acc: float
    #: val/acc after each epoch, in order.
    val_acc: list[float] = field(default_factory=list)
    #: The SourceTaskMonitor's figures (monitored runs only).
    source_before: Optional[float] = None
    source_history: list[tuple[int, float]] = field(default_factory=list)
    #: The epoch of the checkpoint whose test accuracy is reported (the best validation epoch).
    tested_epoch: Optional[int] = None
    unfreeze_at_epoch: Optional[int] = None

    @property
    def source_after(self) -> Optional[float]:
        """The source accuracy of the tested weights."""
        return dict(self.source_history).get(self.tested_epoch)


def _fit(config: str, args: list[str]) -> CNNCLI:
    return CNNCLI(args=["fit", "--config", str(CONFIGS / config), *args])


def _shared_data_args(extra: list[str]) -> list[str]:
    """``--data.init_args.data_dir``/``download`` from the passed-through arguments, for the monitor's datamodule."""
    out: list[str] = []
    for i, arg in enumerate(extra):
        for option in SHARED_DATA_OPTIONS:
            key = f"--data.init_args.{option}"
            monitor_key = f"--trainer.callbacks.init_args.data.init_args.{option}"
            if arg == key and i + 1 < len(extra):
                out += [monitor_key, extra[i + 1]]
            elif arg.startswith(key + "="):
                out += [f"{monitor_key}={arg.split('=', 1)[1]}"]
    return out


def _val_accuracies(cli: CNNCLI) -> list[float]:
    """val/acc per epoch from the run's CSV log."""
    logger = next((lg for lg in cli.trainer.loggers if isinstance(lg, CSVLogger)), None)
    if logger is None:
        return []
    by_epoch: dict[int, float] = {}
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row.get("val/acc"):
                by_epoch[int(row["epoch"])] = float(row["val/acc"])
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _result(cli: CNNCLI, arm: Arm) -> RunResult:
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    result = RunResult(
        label=arm.label,
        test_acc=float(trainer.callback_metrics["test/acc"]),
        val_acc=_val_accuracies(cli),
        tested_epoch=int(torch.load(best, weights_only=True)["epoch"]) if best else trainer.current_epoch - 1,
    )
    freeze = next((c for c in trainer.callbacks if isinstance(c, FreezeBackbone)), None)
    if freeze is not None:
        result.unfreeze_at_epoch = freeze.milestones[0] if freeze.milestones else None
        result.label = arm.label.format(unfreeze=result.unfreeze_at_epoch, ratio=freeze.backbone_lr_ratio)
    monitor = next((c for c in trainer.callbacks if isinstance(c, SourceTaskMonitor)), None)
    if monitor is not None:
        result.source_before, result.source_history = monitor.before, list(monitor.history)
    return result


def run_experiment(extra: list[str], quick: bool = False) -> tuple[str, dict[str, RunResult]]:
    """Pretrain, then run every arm; returns the pretrained checkpoint and each arm's :class:`RunResult`."""
    speed = [*QUICK_TEST] if quick else []
    # No test pass after pretraining: the monitors measure the pretrained model on the source test images.
    pretrain_args = [*(QUICK_PRETRAIN if quick else []), "--test_after_fit", "false", *extra]
    checkpoint = _fit("pretrain_fashion_0to4.yaml", pretrain_args).trainer.checkpoint_callback.best_model_path
    if not checkpoint:
        raise SystemExit("pretraining saved no checkpoint; check the pretrain run's output above.")
    results = {}
    for name, arm in ARMS.items():
        args = [*(QUICK_FINETUNE if quick else []), *speed]
        if arm.pretrained:
            args += ["--trainer.callbacks.init_args.backbone_weights", checkpoint, *(arm.quick if quick else ())]
        args += extra
        if arm.monitored:  # appended last, after every option meant for FreezeBackbone (the list's last until now)
            args += [f"--trainer.callbacks+={MONITOR}", "--trainer.callbacks.init_args.checkpoint", checkpoint]
            args += [*_shared_data_args(extra), *(QUICK_MONITOR if quick else [])]
        results[name] = _result(_fit(arm.config, args), arm)
    return checkpoint, results


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2%}"


def provenance(argv: list[str], minutes: float) -> str:
    """The line that names the command, the date and the machine of a run of this script."""
    command = shlex.join(["python", "scripts/transfer_experiment.py", *argv])
    when = datetime.datetime.now(datetime.timezone.utc)
    return (
        f"Made by `{command}` on {when:%Y-%m-%d %H:%M} (UTC) in {minutes:.0f} min; machine: {cpu_name()}, "
        f"{os.cpu_count()} cores, no GPU used; Python {platform.python_version()}, torch {torch.__version__}."
    )


def tables(results: dict[str, RunResult], quick: bool) -> str:
    """The two markdown tables: transfer and augmentation; forgetting."""
    test_set = "about 1,000 of the 5,000 test images (--quick)" if quick else "5,000 test images"
    source_set = "250 of their 5,000 test images (--quick)" if quick else "their 5,000 test images"
    lines = [
        f"Transfer and augmentation: Fashion-MNIST classes 5–9 from 200 labelled images; test accuracy, {test_set}.",
        "",
        "| run (BatchNorm CNN) | target test accuracy |",
        "|---|---|",
    ]
    for name in ("frozen", "augmented", "scratch"):
        lines.append(f"| {results[name].label} | {_pct(results[name].test_acc)} |")
    lines += [
        "",
        f"Forgetting: the accuracy on the source task (classes 0–4, {source_set}) of the conv part under the "
        "pretrained model's own head; before fine-tuning (the pretrained model itself), and for the weights whose "
        "target accuracy is reported (the best validation epoch's checkpoint).",
        "",
        "| strategy | source acc before | source acc after (epochs trained) | change | source acc at the end "
        "(epochs) | target test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("frozen", "unfreeze", "full"):
        r = results[name]
        change = "–" if r.source_after is None else f"{(r.source_after - r.source_before) * 100:+.2f} pt"
        end_epoch, end_acc = r.source_history[-1] if r.source_history else (None, None)
        end = "–" if end_acc is None else f"{_pct(end_acc)} ({end_epoch + 1})"
        lines.append(
            f"| {r.label} | {_pct(r.source_before)} | {_pct(r.source_after)} ({r.tested_epoch + 1}) | {change} | "
            f"{end} | {_pct(r.test_acc)} |"
        )
    return "\n".join(lines) + "\n"


def plot_forgetting(results: dict[str, RunResult], path: Path) -> None:
    """Source-task accuracy (left) and target validation accuracy (right) after each epoch, one line per strategy;
    epoch 0 is the start (the pretrained conv part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (source_ax, target_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True, constrained_layout=True)
    for name in ("frozen", "unfreeze", "full"):
        r = results[name]
        (line,) = source_ax.plot(
            [0, *(epoch + 1 for epoch, _ in r.source_history)],
            [r.source_before, *(acc for _, acc in r.source_history)],
            marker=".", label=r.label,
        )  # fmt: skip
        target_ax.plot(range(1, len(r.val_acc) + 1), r.val_acc, marker=".", color=line.get_color(), label=r.label)
        if name == "unfreeze" and r.unfreeze_at_epoch is not None:
            for ax in (source_ax, target_ax):
                ax.axvline(r.unfreeze_at_epoch, color=line.get_color(), linestyle=":", linewidth=1)
    source_ax.set_title("source task (classes 0–4): test accuracy, pretrained head")
    target_ax.set_title("target task (classes 5–9): validation accuracy")
    for ax in (source_ax, target_ax):
        ax.set_xlabel("epochs trained")
        ax.set_ylabel("accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    source_ax.legend(fontsize="small")
    with written_whole(path) as partial:
        figure.savefig(partial, dpi=120, format="png")
    plt.close(figure)


def main(argv: list[str]) -> dict[str, RunResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the tables and the plot "
                        "(default: docs/results, which the docs show)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="shorten every run (a check, not the docs' figures)")
    options, extra = parser.parse_known_args(argv)
    start = time.perf_counter()
    checkpoint, results = run_experiment(extra, quick=options.quick)
    options.out.mkdir(parents=True, exist_ok=True)
    minutes = (time.perf_counter() - start) / 60
    text = f"{provenance(argv, minutes)}\n\n{tables(results, options.quick)}"
    with written_whole(options.out / RESULTS_FILE) as partial:
        partial.write_text(text)
    plot_forgetting(results, options.out / PLOT_FILE)
    print(
        f"\n{text}\npretrained checkpoint: {checkpoint}\nwritten: {options.out / RESULTS_FILE}, "
        f"{options.out / PLOT_FILE}\ntotal time: {minutes:.1f} min",
        flush=True,
    )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
