"""Print the Keras-style summary at the start of ``fit`` instead of Lightning's table."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary

from lightning_cnn.summary import keras_summary

__all__ = ["KerasModelSummary"]


class KerasModelSummary(ModelSummary):
    """Prints :func:`~lightning_cnn.summary.keras_summary` of the module's ``net`` when ``fit`` starts (on the
    main process only). Being a ``ModelSummary``, it replaces the one Lightning adds by default.

    The table's Trainable column shows what a fine-tuning callback froze, since it runs after freezing.
    """

    def __init__(self) -> None:
        super().__init__(max_depth=1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = getattr(pl_module, "net", pl_module)
        input_shape = getattr(pl_module, "input_shape", None)
        print(keras_summary(net, input_shape, title=type(net).__name__), flush=True)
