"""Callbacks: checkpoints whose last and best mean what they say, Keras' EarlyStopping semantics, model summary, training plots, per-class reports, prediction files,
what a run prints (a header, one line per epoch into a log file), backbone freezing for fine-tuning, a wall-time budget with its learning-rate schedule, and the source task's accuracy while fine-tuning (catastrophic forgetting)."""

from lightning_cnn.callbacks.checkpoint import ModelCheckpoint
from lightning_cnn.callbacks.early_stopping import EarlyStopping
from lightning_cnn.callbacks.finetune import FreezeBackbone
from lightning_cnn.callbacks.plots import TrainingPlots
from lightning_cnn.callbacks.predictions import PredictionWriter
from lightning_cnn.callbacks.progress import RunLog
from lightning_cnn.callbacks.report import ClassificationReport
from lightning_cnn.callbacks.source_task import SourceTaskMonitor
from lightning_cnn.callbacks.summary import KerasModelSummary
from lightning_cnn.callbacks.time_budget import TimeBudget

__all__ = [
    "ClassificationReport",
    "EarlyStopping",
    "FreezeBackbone",
    "KerasModelSummary",
    "ModelCheckpoint",
    "PredictionWriter",
    "RunLog",
    "SourceTaskMonitor",
    "TimeBudget",
    "TrainingPlots",
]
