"""What a run prints while it trains: a short header, then, when nobody watches a terminal, one line per epoch and a
heartbeat during long epochs instead of a progress bar redrawn thousands of times into a log file."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Literal, Optional

import pytorch_lightning as pl
from pytorch_lightning import Callback

__all__ = ["RunLog", "prints_lines"]

Mode = Literal["auto", "bar", "lines"]
_MODES = ("auto", "bar", "lines")


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _metric(trainer: pl.Trainer, *names: str) -> Optional[float]:
    for name in names:
        value = trainer.callback_metrics.get(name)
        if value is not None:
            return float(value)
    return None


def _count(dataset: Any) -> Optional[int]:
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def prints_lines(mode: str) -> bool:
    """Whether ``mode`` means lines for this process: ``lines``, or ``auto`` with standard output not a terminal."""
    return mode == "lines" or (mode == "auto" and not sys.stdout.isatty())


class RunLog(Callback):
    """A header of at most four lines when ``fit`` starts (the run's folder, the data, the model, the devices and
    seed), and, in ``lines`` mode, one line per epoch (train and validation loss and accuracy, learning rate, the
    epoch's time, the run's ETA) plus a heartbeat line every ``heartbeat`` seconds inside an epoch (step, images/s,
    the epoch's ETA). The CLI turns Lightning's progress bar off in ``lines`` mode.

    Args:
        mode: ``auto``: ``lines`` when standard output is not a terminal (a pipe, a file, SLURM, CI), else ``bar``
            (Lightning's live progress bar); ``bar`` or ``lines`` force one.
        heartbeat: Seconds between heartbeat lines inside an epoch; 0 for none.
        header: Print the header when ``fit`` starts.

    Raises:
        ValueError: On an unknown ``mode`` or a negative ``heartbeat``.
    """

    def __init__(self, mode: Mode = "auto", heartbeat: float = 60.0, header: bool = True) -> None:
        if mode not in _MODES:
            raise ValueError(f"progress.mode={mode!r}; choose one of {', '.join(_MODES)}.")
        if not heartbeat >= 0:
            raise ValueError(f"progress.heartbeat={heartbeat!r}; give seconds >= 0 (0: no heartbeat lines).")
        self.mode = mode
        self.heartbeat = heartbeat
        self.header = header
        self._epoch_start = self._last_beat = 0.0
        self._epoch_times: list[float] = []
        self._images = 0

    @property
    def prints_lines(self) -> bool:
        """Whether this run prints lines rather than a progress bar."""
        return prints_lines(self.mode)

    # --- the header -------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = trainer.log_dir or trainer.default_root_dir  # a broadcast under DDP: every process asks
        if self.header and trainer.is_global_zero:
            print("\n".join(self._header(trainer, pl_module, folder)), flush=True)

    def _header(self, trainer: pl.Trainer, pl_module: pl.LightningModule, folder: str) -> list[str]:
        lines = [f"run: {folder}"]
        data = trainer.datamodule
        if data is not None:
            sizes = {split: _count(getattr(data, f"{split}_set", None)) for split in ("train", "val", "test")}
            counts = ", ".join(f"{n:,} {split}" for split, n in sizes.items() if n is not None)
            shape = "×".join(map(str, getattr(data, "dims", ())))
            classes = getattr(data, "num_classes", None)
            about = [part for part in (counts and f"{counts} images", shape, classes and f"{classes} classes") if part]
            lines.append(f"data: {getattr(data, 'name', type(data).__name__)}, {', '.join(about)}")
        net = getattr(pl_module, "net", pl_module)
        total = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        lines.append(f"model: {type(net).__name__}, {total:,} parameters ({trainable:,} trainable)")
        processes = trainer.world_size
        seed = os.environ.get("PL_GLOBAL_SEED", "none")
        lines.append(
            f"device: {trainer.strategy.root_device.type}, {trainer.precision}, "
            f"{processes} process{'es' if processes != 1 else ''}; seed {seed}"
        )
        return lines

    # --- one line per epoch, a heartbeat within -------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._last_beat = time.perf_counter()
        self._images = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not (self.prints_lines and trainer.is_global_zero):
            return
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images += len(images) if hasattr(images, "__len__") else 0
        now = time.perf_counter()
        if not self.heartbeat or now - self._last_beat < self.heartbeat:
            return
        self._last_beat = now
        elapsed = now - self._epoch_start
        done, total = batch_idx + 1, trainer.num_training_batches
        line = f"  epoch {trainer.current_epoch + 1}: step {done:,}"
        if isinstance(total, int):
            line += f"/{total:,}, epoch ETA {_duration(elapsed / done * (total - done))}"
        print(f"{line}, {self._images / elapsed:,.0f} images/s", flush=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self._epoch_times.append(seconds)
        if not (self.prints_lines and trainer.is_global_zero) or trainer.sanity_checking:
            return
        print(self._epoch_line(trainer, seconds), flush=True)

    def _epoch_line(self, trainer: pl.Trainer, seconds: float) -> str:
        epoch, last = trainer.current_epoch + 1, trainer.max_epochs
        parts = [f"epoch {epoch}/{last}" if last and last > 0 else f"epoch {epoch}"]
        for stage, loss_names, acc_names in (
            ("train", ("train/loss_epoch", "train/loss"), ("train/acc_epoch", "train/acc")),
            ("val", ("val/loss",), ("val/acc",)),
        ):
            loss, acc = _metric(trainer, *loss_names), _metric(trainer, *acc_names)
            if loss is not None or acc is not None:
                shown = [f"loss {loss:.4f}" if loss is not None else "", f"acc {acc:.4f}" if acc is not None else ""]
                parts.append(f"{stage} {' '.join(filter(None, shown))}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(_duration(seconds))
        if last and last > 0 and epoch < last:
            mean = sum(self._epoch_times) / len(self._epoch_times)
            parts.append(f"ETA {_duration(mean * (last - epoch))}")
        return "  ".join(parts)
