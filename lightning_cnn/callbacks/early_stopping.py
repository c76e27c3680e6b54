"""Early stopping with Keras' ``restore_best_weights``."""

from __future__ import annotations

import copy
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping as _LightningEarlyStopping
from torch import Tensor

__all__ = ["EarlyStopping"]


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` plus Keras' ``restore_best_weights``.

    With ``restore_best_weights``, the module's weights (and buffers) are copied to CPU memory each time the
    monitored value improves by more than ``min_delta`` and loaded back when fit ends — as Keras 3 does. Those
    weights travel in the checkpoint, so a resumed run still restores the best of the whole run.

    They are loaded in ``on_fit_end``, after the checkpoint callbacks' end-of-training ``last.ckpt``: that file
    stays the final state (weights, optimizer, epoch counter agreeing), resumable as such, while the restored
    weights are those of the best checkpoint (:class:`~lightning_cnn.callbacks.ModelCheckpoint` uses the same
    ``min_delta``).

    Keras' defaults differ from Lightning's: Keras uses ``patience=0``, Lightning ``patience=3``; the shipped
    configs state the value they use. A NaN or infinite monitored value counts as an epoch without improvement,
    as in Keras (Lightning stops at once; ``check_finite=True`` restores that). A training loss that turns
    non-finite still stops the run: the module checks it every epoch.

    Args:
        restore_best_weights: Load the weights of the best monitored epoch at the end of training.
        **kwargs: Lightning ``EarlyStopping`` arguments (``monitor``, ``mode``, ``patience``, ``min_delta``, …).
    """

    def __init__(self, monitor: str = "val/loss", restore_best_weights: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("check_finite", False)  # Keras: NaN is no improvement, not a stop
        super().__init__(monitor=monitor, **kwargs)
        self.restore_best_weights = restore_best_weights
        self.best_weights: Optional[dict[str, Tensor]] = None
        self.best_epoch: Optional[int] = None

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        previous_best = self.best_score
        super()._run_early_stopping_check(trainer)
        # The parent replaces best_score with the current value exactly when the monitor improved.
        if self.restore_best_weights and self.best_score is not previous_best:
            self._remember_weights(trainer)

    def _remember_weights(self, trainer: pl.Trainer) -> None:
        state = trainer.lightning_module.state_dict()
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        self.best_epoch = trainer.current_epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            pl_module.load_state_dict(copy.deepcopy(self.best_weights))
            if self.verbose:
                self._log_info(
                    trainer,
                    f"Restored the weights of epoch {self.best_epoch} (best {self.monitor}).",
                    self.log_rank_zero_only,
                )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.restore_best_weights:
            state.update(best_weights=self.best_weights, best_epoch=self.best_epoch)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_weights = state_dict.get("best_weights")
        self.best_epoch = state_dict.get("best_epoch")
