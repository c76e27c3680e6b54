"""Per-class precision, recall and F1 beside accuracy, printed after ``validate`` and ``test``.

The figures come from the confusion matrix that :class:`~lightning_cnn.ImageClassifier` accumulates in its
evaluation steps (a torchmetrics ``MulticlassConfusionMatrix``, summed over processes): no second pass over the
data. Precision is TP / (TP + FP) per predicted class, recall TP / (TP + FN), F1 their harmonic mean; a class
never predicted (or absent) scores 0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from lightning_cnn.callbacks.plots import _class_names, _log_folder, _report
from lightning_cnn.paths import free_path, written_whole

__all__ = ["ClassificationReport", "format_report", "per_class_scores"]


def per_class_scores(confusion: Tensor) -> dict[str, Tensor]:
    """``precision``, ``recall``, ``f1`` and ``support`` per class from a confusion matrix (rows: true class)."""
    confusion = confusion.double()
    tp = confusion.diag()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual.long()}


def _rows(confusion: Tensor, class_names: Sequence[str]) -> list[list[str]]:
    scores = per_class_scores(confusion)
    total = int(confusion.sum())
    rows = [
        [name, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", str(int(s))]
        for name, p, r, f, s in zip(
            class_names, *(scores[k].tolist() for k in ("precision", "recall", "f1", "support"))
        )
    ]
    accuracy = float(confusion.diag().sum()) / max(total, 1)
    rows.append(["accuracy", "", "", f"{accuracy:.4f}", str(total)])
    macro = [f"{float(scores[k].mean()):.4f}" for k in ("precision", "recall", "f1")]
    rows.append(["macro avg", *macro, str(total)])
    weights = scores["support"].double() / max(total, 1)
    weighted = [f"{float((scores[k] * weights).sum()):.4f}" for k in ("precision", "recall", "f1")]
    rows.append(["weighted avg", *weighted, str(total)])
    return rows


_HEADER = ["class", "precision", "recall", "f1", "support"]


def format_report(confusion: Tensor, class_names: Sequence[str]) -> str:
    """The per-class table as text, with accuracy and macro/weighted averages, as scikit-learn prints it."""
    rows = _rows(confusion, class_names)
    width = max(len(_HEADER[0]), *(len(r[0]) for r in rows))
    lines = [f"{_HEADER[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in _HEADER[1:])]
    for row in rows:
        if row[0] == "accuracy":
            lines.append("")
        lines.append(f"{row[0]:<{width}}  " + "  ".join(f"{v:>9}" for v in row[1:]))
    return "\n".join(lines)


class ClassificationReport(pl.Callback):
    """After ``validate`` and ``test``: prints the per-class precision/recall/F1 table and writes it as
    ``classification_report_<stage>.csv`` in the run's log folder (never over an earlier file).

    Args:
        enabled: Print and write the report.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.last_report: str = ""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # not the validation epochs of fit
            self._report(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        confusion = getattr(pl_module, "confusion_matrices", {}).get(stage)
        if not self.enabled or confusion is None:
            return
        folder = _log_folder(trainer)  # collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        names = _class_names(trainer, pl_module, len(confusion))
        split = {"val": "validation", "test": "test"}[stage]
        self.last_report = format_report(confusion, names)
        print(f"\nPer-class results on the {split} split:\n{self.last_report}\n", flush=True)
        if folder is None:  # a fast_dev_run writes nothing
            return
        path = free_path(folder / f"classification_report_{stage}.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as partial, open(partial, "w", newline="") as f:
            csv.writer(f).writerows([_HEADER, *_rows(confusion, names)])
        _report("per-class report", Path(path))
