"""Lightning's ModelCheckpoint with checkpoints that mean what their names say.

- ``last.ckpt`` is the newest full state after every epoch. Lightning rewrites it only when a top-k file is
  saved, so after an epoch that did not improve ``--ckpt_path last`` would retrain that epoch.
- "Best" is one notion for the run: an epoch is better only when it improves on the best by more than
  ``min_delta``, which by default is that of an :class:`~lightning_cnn.callbacks.EarlyStopping` watching the same
  metric. Its ``restore_best_weights`` then loads exactly the weights of the best checkpoint, the one
  ``test_after_fit`` evaluates.
- A ``fast_dev_run`` writes nothing (Lightning's end-of-training ``last.ckpt`` would land in the working folder).
- A write that fails (a full disk) names the checkpoints' folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping as _LightningEarlyStopping
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from torch import Tensor

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(_LightningModelCheckpoint):
    """``pytorch_lightning.callbacks.ModelCheckpoint`` (same arguments) plus ``min_delta``.

    Args:
        min_delta: How much the monitored value must improve on the k-th best to count as better. ``None``: the
            ``min_delta`` of an EarlyStopping callback monitoring the same metric in the same mode, else 0.
        **kwargs: Lightning ``ModelCheckpoint`` arguments (``monitor``, ``mode``, ``save_top_k``, ``save_last``, …).
    """

    def __init__(self, *args: Any, min_delta: Optional[float] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if min_delta is not None and min_delta < 0:
            raise ValueError(f"min_delta={min_delta}; use a value >= 0 (or null to follow EarlyStopping's).")
        self.min_delta = min_delta

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.min_delta is None:
            self.min_delta = next(
                (
                    abs(float(callback.min_delta))
                    for callback in trainer.callbacks
                    if isinstance(callback, _LightningEarlyStopping)
                    and callback.monitor == self.monitor
                    and callback.mode == self.mode
                ),
                0.0,
            )

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Optional[Tensor] = None) -> bool:
        if current is None or self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return super().check_monitor_top_k(trainer, current)
        kth = self.best_k_models[self.kth_best_model_path]
        delta = self.min_delta or 0.0
        better = current < kth - delta if self.mode == "min" else current > kth + delta
        return trainer.strategy.reduce_boolean_decision(bool(torch.as_tensor(better)))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        try:
            super()._save_checkpoint(trainer, filepath)
        except OSError as err:
            # The writer's error may name a temporary file elsewhere, or none: name the checkpoint's folder.
            raise OSError(err.errno, err.strerror, str(Path(filepath).parent)) from None

    # --- last.ckpt after every epoch --------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_stale(trainer)

    def _save_last_if_stale(self, trainer: pl.Trainer) -> None:
        # Only the epoch-wise checkpoint (every_n_epochs >= 1); a step- or time-wise one keeps its own schedule.
        if not self.save_last or self._every_n_epochs < 1 or self._should_skip_saving_checkpoint(trainer):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)
