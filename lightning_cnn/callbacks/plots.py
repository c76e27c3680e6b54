"""Pictures of a run: learning curves when ``fit`` ends, a confusion matrix when ``test`` ends.

Both PNGs go into the run's log folder (next to ``config.yaml`` and ``metrics.csv``); their paths are printed.
An existing picture is never overwritten: a second test of the same run writes ``confusion_matrix_1.png``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from torch import Tensor

from lightning_cnn.paths import free_path, written_whole

__all__ = ["TrainingPlots"]

# (panel title, train metric, validation metric) for the learning-curve figure.
_CURVES = (("loss", "train/loss_epoch", "val/loss"), ("accuracy", "train/acc_epoch", "val/acc"))


class TrainingPlots(pl.Callback):
    """Writes ``learning_curves.png`` (loss and accuracy per epoch, train vs validation, and each optimizer param
    group's learning rate) after ``fit`` and
    ``confusion_matrix.png`` (rows: true class, columns: predicted class, row-normalized) after ``test``.

    Args:
        learning_curves: Draw the learning curves.
        confusion_matrix: Draw the test confusion matrix.
    """

    def __init__(self, learning_curves: bool = True, confusion_matrix: bool = True) -> None:
        self.learning_curves = learning_curves
        self.confusion_matrix = confusion_matrix
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    # --- learning curves ---------------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so both train and val epoch metrics are in callback_metrics.
        for _title, *keys in _CURVES:
            for key in keys:
                value = trainer.callback_metrics.get(key)
                if value is not None:
                    self.history[key].append((trainer.current_epoch, float(value)))
        # The learning rate of every param group (a fine-tuned backbone's group appears when it is unfrozen).
        for optimizer in trainer.optimizers[:1]:
            for i, group in enumerate(optimizer.param_groups):
                self.history[f"lr/group {i}"].append((trainer.current_epoch, float(group["lr"])))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = _log_folder(trainer)  # on every rank: it is a collective call under DDP
        if folder is not None and self.learning_curves and trainer.is_global_zero and self.history:
            _report("learning curves", self._draw_curves(folder))

    def _draw_curves(self, folder: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        lr_keys = sorted(k for k in self.history if k.startswith("lr/"))
        panels = [*_CURVES, ("learning rate", *lr_keys)] if lr_keys else list(_CURVES)
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
        for ax, (title, *keys) in zip(axes, panels):
            for key, style in zip(keys, ("-o", "-s", "-^", "-v", "-D", "-x")):
                if self.history.get(key):
                    epochs, values = zip(*self.history[key])
                    label = key.split("/")[1] if key.startswith("lr/") else key.split("/")[0]
                    ax.plot(epochs, values, style, label=label, markersize=4)
            if title == "learning rate":
                ax.set_yscale("log")
            ax.set(title=title, xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        return _save(fig, folder / "learning_curves.png")

    # --- confusion matrix --------------------------------------------------------------------------------------

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The module accumulated the matrix during its test steps (summed over processes): no second pass here.
        confusion = getattr(pl_module, "confusion_matrices", {}).get("test")
        if confusion is None or not self.confusion_matrix:
            return
        folder = _log_folder(trainer)
        if folder is not None and trainer.is_global_zero:
            names = _class_names(trainer, pl_module, len(confusion))
            _report("confusion matrix", self._draw_confusion(folder, confusion, names))

    def _draw_confusion(self, folder: Path, confusion: Tensor, names: list[str]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rates = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
        n = len(names)
        # Grows with the classes, but never narrower than the title needs (a binary task's 2 × 2 matrix).
        fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.55 * n), max(3.6, 0.8 + 0.5 * n)))
        image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        if n <= 20:  # beyond that the labels and numbers are unreadable; the colours still tell the story
            ax.set_xticks(range(n), names, rotation=45, ha="right")
            ax.set_yticks(range(n), names)
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
        accuracy = confusion.diag().sum() / confusion.sum().clamp(min=1)
        ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix (accuracy {accuracy:.3f})")
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        return _save(fig, folder / "confusion_matrix.png")


def _class_names(trainer: pl.Trainer, pl_module: pl.LightningModule, n: int) -> list[str]:
    """The ``n`` class names: the model's recorded preprocessing, else the datamodule's, else ``0..n-1``."""
    preprocessing = getattr(pl_module, "preprocessing", None)
    names = list(preprocessing.class_names) if preprocessing is not None else []
    if len(names) != n:
        names = list(getattr(trainer.datamodule, "label_names", None) or [])
    return names if len(names) == n else [str(i) for i in range(n)]


def _log_folder(trainer: pl.Trainer) -> Optional[Path]:
    """The run's folder for pictures and reports; ``None`` under ``fast_dev_run``, a smoke run that writes
    nothing (it has no run folder: Lightning turns the loggers off, and ``log_dir`` is the working folder)."""
    if trainer.fast_dev_run:
        return None
    # trainer.log_dir broadcasts rank 0's folder: every rank must call it, or DDP waits forever.
    return Path(trainer.log_dir or trainer.default_root_dir)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    path = free_path(path)
    try:  # whole or not at all: a full disk leaves no truncated picture
        with written_whole(path) as partial:
            fig.savefig(partial, dpi=110, format=path.suffix.lstrip("."))
    finally:
        plt.close(fig)
    return path


def _report(what: str, path: Path) -> None:
    print(f"Saved {what}: {path}", flush=True)
