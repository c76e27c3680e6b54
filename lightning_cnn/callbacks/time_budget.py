"""Train for a wall-time budget instead of a number of epochs: the learning rate anneals to zero as the time runs
out, whatever the machine's speed."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, Optional, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.module_checks import TrainingSetupError

__all__ = ["TimeBudget"]

_CLOCK_PART = re.compile(r"\d+(\.\d*)?")


def parse_duration(value: Union[str, float]) -> float:
    """Seconds in ``value``: a number of seconds (or its text), or ``"HH:MM:SS"`` / ``"DD:HH:MM:SS"`` as
    Lightning's ``max_time`` takes it.

    Raises:
        ValueError: If ``value`` is neither, or is not positive.
    """
    try:  # seconds, as a number or its text ("840": the CLI tries str before float)
        seconds = math.nan if isinstance(value, bool) else float(value)  # a bool is an int to Python, not a time
    except (TypeError, ValueError):
        numbers = _clock_numbers(str(value))
        seconds = sum(n * unit for n, unit in zip(reversed(numbers), (1, 60, 3600, 86400))) if numbers else math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(
            f"duration={value!r} is not a time budget; give seconds (e.g. 840) or 'HH:MM:SS' / 'DD:HH:MM:SS' "
            "(e.g. '00:14:00'), more than zero."
        )
    return seconds


def _clock_numbers(text: str) -> list[float]:
    """The numbers of ``"HH:MM:SS"`` or ``"DD:HH:MM:SS"``; empty for any other text. Each part is digits (the
    seconds may have a fraction): a sign is refused, since ``float("-00")`` is -0.0 and would pass as zero."""
    parts = text.strip().split(":")
    if len(parts) not in (3, 4) or not all(_CLOCK_PART.fullmatch(part) for part in parts):
        return []
    return [float(part) for part in parts]


class TimeBudget(Timer):
    """Fit training into ``duration`` of wall time: a cosine learning rate from the optimizer's to zero over that
    time, then a stop.

    A schedule counted in epochs ends where it was planned only on a machine as fast as the one it was planned on:
    on a slower one a time limit (``max_time``) cuts it while the rate is still high, and the best epoch so far
    is tested. Here the rate is set before every training batch from the share of the budget already spent,
    ``lr = initial_lr * (1 + cos(pi * spent / duration)) / 2``, so the last batches always train at a rate near
    zero, and a faster machine simply trains more epochs. When the budget is spent, training stops after that
    batch; Lightning then validates the partial epoch (with ``check_val_every_n_epoch: 1``), so the checkpoint
    chosen by ``val/acc`` can be the fully annealed one.

    The clock starts when training starts (after start-up and Lightning's sanity check) and includes validation,
    as ``max_time`` does; start-up and the final test come on top. Set ``max_epochs`` high enough (``-1``: no
    limit) that the budget, not the epoch count, ends training: a run that ends early is warned about. The model
    must not configure an ``lr_scheduler`` of its own. The number of epochs, and so the result, depends on the
    machine's speed: seeds repeat a run only on the same machine under the same load.

    It is Lightning's ``Timer`` (the clock behind ``max_time``, which it replaces: a ``max_time`` beside it is
    ignored) plus the schedule. The time spent and the starting rates are kept in checkpoints, so a resumed run
    goes on with the budget that was left. Under DDP the time of the first process is used by all, so every
    process sets the same rate and they stop at the same batch.

    Args:
        duration: The training time, in seconds or as ``"HH:MM:SS"`` / ``"DD:HH:MM:SS"``.

    Raises:
        ValueError: If ``duration`` is not a positive time, or the model configures an ``lr_scheduler``.
    """

    def __init__(self, duration: Union[str, float] = "00:14:00") -> None:
        super().__init__(duration=timedelta(seconds=parse_duration(duration)), interval="step")
        self.duration = duration
        self.initial_lrs: Optional[list[float]] = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial_lrs": self.initial_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.initial_lrs = state_dict["initial_lrs"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_no_scheduler(trainer)
        if self.initial_lrs is None:
            self.initial_lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        super().on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._set_learning_rates(trainer, self._shared_fraction_spent(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        fraction = self.time_elapsed() / self._duration
        if fraction < 0.99 and not trainer.interrupted:
            rank_zero_warn(
                f"TimeBudget: training ended after {fraction:.0%} of its {self.duration} budget, with the learning "
                "rate not yet annealed (max_epochs or max_steps ended it first); raise trainer.max_epochs (-1: no "
                "limit) to use the whole budget."
            )

    def learning_rate_factor(self, fraction_spent: float) -> float:
        """The share of the starting learning rate used when ``fraction_spent`` of the budget is gone."""
        return 0.5 * (1.0 + math.cos(math.pi * min(max(fraction_spent, 0.0), 1.0)))

    def _shared_fraction_spent(self, trainer: pl.Trainer) -> float:
        # Rank 0's clock for every process: their rates must agree (a no-op without DDP), as Timer does for the stop.
        fraction = torch.tensor(self.time_elapsed() / self._duration, dtype=torch.float64)
        return float(trainer.strategy.broadcast(fraction, src=0))

    def _set_learning_rates(self, trainer: pl.Trainer, fraction_spent: float) -> None:
        factor = self.learning_rate_factor(fraction_spent)
        groups = [group for opt in trainer.optimizers for group in opt.param_groups]
        assert self.initial_lrs is not None and len(groups) == len(self.initial_lrs), "set in on_train_start"
        for group, initial in zip(groups, self.initial_lrs):
            group["lr"] = initial * factor

    @staticmethod
    def _check_no_scheduler(trainer: pl.Trainer) -> None:
        if trainer.lr_scheduler_configs:
            names = ", ".join(type(config.scheduler).__name__ for config in trainer.lr_scheduler_configs)
            raise TrainingSetupError(
                f"TimeBudget sets the learning rate itself, but the model also configures {names}; remove the "
                "model's lr_scheduler (model.init_args.lr_scheduler: null) or drop the TimeBudget callback."
            )
