"""The trial's side of a sweep: inside the ``fit`` process a trial runs, report the objective to the study after
each validation, stop the run when the pruner says so, and leave the result for the worker that started it.

A worker starts each trial as an ordinary ``fit`` with the environment variable ``LIGHTNING_CNN_TRIAL`` set; the
CLI then adds :class:`TrialReporter` to the trainer's callbacks (it is not part of the run's config, so the
trial's ``config.yaml`` reruns without Optuna).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.console import say
from lightning_cnn.paths import written_whole

__all__ = ["TRIAL_ENV", "TrialReporter"]

#: The environment variable through which a worker hands a trial's coordinates to its ``fit`` process.
TRIAL_ENV = "LIGHTNING_CNN_TRIAL"


class TrialReporter(pl.Callback):
    """Report ``metric`` to an Optuna trial after every validation and stop early when it is pruned.

    Args:
        storage: The study's Optuna storage URL.
        study: The study's name.
        trial_id: The trial's id in the storage.
        metric: The logged value the study optimizes (``val/acc``).
        direction: ``minimize`` or ``maximize``.
        pruner: The study's pruner, as :func:`lightning_cnn.tune.engine.make_pruner` builds it from its name.
        max_epochs: The trials' epoch budget (the pruner's largest resource).
        result: Where to write the trial's result (JSON) when fit ends.
        parent: The worker's process id: if the worker is gone (killed), the trial stops at once.
    """

    def __init__(
        self,
        storage: str,
        study: str,
        trial_id: int,
        metric: str,
        direction: str,
        pruner: str,
        max_epochs: int,
        result: str,
        parent: int,
    ) -> None:
        self.storage, self.study_name, self.trial_id = storage, study, trial_id
        self.metric, self.direction, self.pruner = metric, direction, pruner
        self.max_epochs, self.result, self.parent = max_epochs, Path(result), parent
        self.best: Optional[float] = None
        self.epochs = 0
        self.pruned = False
        self._trial: Any = None

    @classmethod
    def from_env(cls) -> Optional[TrialReporter]:
        """The reporter described by ``LIGHTNING_CNN_TRIAL``, or ``None`` outside a sweep."""
        spec = os.environ.get(TRIAL_ENV)
        return cls(**json.loads(spec)) if spec else None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.is_global_zero and os.getppid() != self.parent:
            os._exit(1)  # the worker was killed: the study marks this trial failed when it resumes

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = self._report(trainer) if trainer.is_global_zero else False
        if trainer.world_size > 1:
            stop = trainer.strategy.broadcast(stop, src=0)
        if stop:
            self.pruned = True
            trainer.should_stop = True
            say(f"Pruned by the study after epoch {trainer.current_epoch + 1}: its {self.metric} trails the others'.")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write_result()

    # --- helpers --------------------------------------------------------------------------------------------

    def _report(self, trainer: pl.Trainer) -> bool:
        """Report this epoch's value; whether the pruner stops the trial."""
        logged = trainer.callback_metrics.get(self.metric)
        if logged is None:
            known = ", ".join(sorted(k for k in trainer.callback_metrics if "/" in k))
            raise ConfigError(f"the objective {self.metric!r} is not logged; choose one of: {known}.")
        value = float(logged)
        self.epochs = trainer.current_epoch + 1
        if math.isfinite(value) and (self.best is None or self._better(value, self.best)):
            self.best = value
        trial = self._optuna_trial()
        trial.report(value, self.epochs)
        # After the last epoch there is nothing left to save: the trial completes with its value.
        return self.epochs < self.max_epochs and trial.should_prune()

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.direction == "maximize" else value < than

    def _optuna_trial(self) -> Any:
        if self._trial is None:
            import optuna

            from lightning_cnn.tune.engine import make_pruner, open_storage

            study = optuna.load_study(
                study_name=self.study_name,
                storage=open_storage(self.storage),
                pruner=make_pruner(self.pruner, self.max_epochs),
            )
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def _write_result(self) -> None:
        result = {"value": self.best, "epochs": self.epochs, "pruned": self.pruned}
        with written_whole(self.result) as partial:
            partial.write_text(json.dumps(result))
