"""Print the Keras-style summary at the start of ``fit`` instead of Lightning's table."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary

from lightning_cnn.callbacks.finetune import FreezeBackbone
from lightning_cnn.summary import keras_summary

__all__ = ["KerasModelSummary"]


class KerasModelSummary(ModelSummary):
    """Prints :func:`~lightning_cnn.summary.keras_summary` of the module's ``net`` when ``fit`` starts (on the
    main process only). Being a ``ModelSummary``, it replaces the one Lightning adds by default, so switching it off
    leaves no summary at all.

    The table's Trainable column shows what a fine-tuning callback froze, since it runs after freezing; a
    ``FreezeBackbone`` that unfreezes later adds one line per milestone with the trainable count from then on.

    Args:
        enabled: Print the summary when ``fit`` starts (``summary: {enabled: false}`` in YAML to skip it).
        show_shapes: Add each layer's output shape, found by one forward pass on zeros of the model's
            ``input_shape`` in eval mode (weights and mode are left as they were).
    """

    def __init__(self, enabled: bool = True, show_shapes: bool = True) -> None:
        super().__init__(max_depth=1)
        self.enabled = enabled
        self.show_shapes = show_shapes

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and trainer.is_global_zero:
            self.print_summary(pl_module)
            for freezer in (c for c in trainer.callbacks if isinstance(c, FreezeBackbone)):
                for line in freezer.plan(pl_module):  # when the trainable count above changes, and to what
                    print(line, flush=True)

    def print_summary(self, pl_module: pl.LightningModule) -> None:
        """Print the table for ``pl_module``'s ``net`` (or the module itself when it has none)."""
        net = getattr(pl_module, "net", pl_module)
        input_shape = getattr(pl_module, "input_shape", None) if self.show_shapes else None
        print(keras_summary(net, input_shape, title=type(net).__name__), flush=True)
