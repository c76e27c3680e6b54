"""Callbacks: Keras' EarlyStopping semantics and model summary."""

from lightning_cnn.callbacks.early_stopping import EarlyStopping
from lightning_cnn.callbacks.summary import KerasModelSummary

__all__ = ["EarlyStopping", "KerasModelSummary"]
