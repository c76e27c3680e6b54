"""Callbacks: Keras' EarlyStopping semantics, model summary, training plots, and backbone freezing for fine-tuning."""

from lightning_cnn.callbacks.early_stopping import EarlyStopping
from lightning_cnn.callbacks.finetune import FreezeBackbone
from lightning_cnn.callbacks.plots import TrainingPlots
from lightning_cnn.callbacks.summary import KerasModelSummary

__all__ = ["EarlyStopping", "FreezeBackbone", "KerasModelSummary", "TrainingPlots"]
