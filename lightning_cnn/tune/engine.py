"""Optuna's pieces by the names ``cli.py tune`` takes: a storage from its URL, a sampler, a pruner."""

from __future__ import annotations

from typing import Any

from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.tune.space import SearchSpace

__all__ = ["PRUNERS", "SAMPLERS", "make_pruner", "make_sampler", "open_storage"]

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("hyperband", "median", "none")
_JOURNAL_PREFIX = "journal:"


def open_storage(url: str) -> Any:
    """An Optuna storage: ``journal:PATH`` (or a path ending in ``.log``) for a journal file, which works on a
    shared filesystem; anything else is a database URL (``sqlite:///…``, ``postgresql://…``, ``mysql://…``)."""
    import optuna

    if url.startswith(_JOURNAL_PREFIX) or url.endswith(".log"):
        path = url.removeprefix(_JOURNAL_PREFIX).removeprefix("//")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.storages.RDBStorage(url)


def make_sampler(name: str, space: SearchSpace, seed: int) -> Any:
    """TPE (Optuna's default, as KerasTuner's BayesianOptimization), random, grid or CMA-ES, seeded."""
    import optuna

    if name == "tpe":
        # constant_liar: parallel workers do not all draw the same point while the others' trials run.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    try:
        import cmaes  # noqa: F401  (CmaEsSampler imports it only when it samples)
    except ImportError:
        raise ConfigError("--sampler cmaes needs the cmaes package: pip install cmaes (or choose tpe).") from None
    return optuna.samplers.CmaEsSampler(seed=seed)


def make_pruner(name: str, max_epochs: int) -> Any:
    """Hyperband (KerasTuner's Hyperband on the epoch budget), median, or none."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    return optuna.pruners.NopPruner()
