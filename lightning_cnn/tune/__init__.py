"""Sweeps on Optuna: ``python cli.py tune --config CONFIG --search SEARCH --trials N`` (KerasTuner's job).

:mod:`~lightning_cnn.tune.space` reads the search file, :mod:`~lightning_cnn.tune.checks` checks it against the
config before a study starts, :mod:`~lightning_cnn.tune.engine` builds Optuna's storage, sampler and pruner from
their names, :mod:`~lightning_cnn.tune.study` runs the study's workers (each trial an ordinary ``fit`` process),
:mod:`~lightning_cnn.tune.reporter` reports a trial's epochs to the study from inside its ``fit`` and stops it
when it is pruned, :mod:`~lightning_cnn.tune.outputs` writes ``trials.csv``, ``best.yaml`` and the plots. Optuna is an optional extra: ``pip install lightning-cnn[tune]``.
"""

from lightning_cnn.tune.reporter import TrialReporter
from lightning_cnn.tune.space import SearchFileError, SearchSpace

__all__ = ["SearchFileError", "SearchSpace", "TrialReporter"]
