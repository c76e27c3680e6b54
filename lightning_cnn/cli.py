"""The command line: LightningCLI over :class:`ImageClassifier` and the datamodules.

``python cli.py {fit,validate,test,predict} --config configs/<name>.yaml`` (and ``--print_config``). The
datamodule's number of classes and image shape are linked into the model and its network, so they are never
typed twice; ``test_after_fit: true`` evaluates the best checkpoint on the test split when ``fit`` ends.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional, TextIO

from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.callbacks import KerasModelSummary, TrainingPlots
from lightning_cnn.callbacks.rng_state import RNGStateCheckpoint
from lightning_cnn.data.base import CorruptDataError, DataNotFoundError, ImageDataModule
from lightning_cnn.models.backbones import WeightsMismatchError, WeightsUnavailableError
from lightning_cnn.module import ImageClassifier

__all__ = ["CNNCLI", "ConfigError", "main"]

# A YAML `optimizer:` replaces ImageClassifier.configure_optimizers, which is only the Python-API default;
# Lightning warns about that replacement on every run although it is the intended behaviour here.
warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by.*")


class _ConciseParser(LightningArgumentParser):
    """On a bad option or YAML key, print a one-line usage instead of the hundred-line option list, so the error
    naming the bad key is what a user sees (``--help`` still lists every option)."""

    def print_usage(self, file: Optional[TextIO] = None) -> None:
        print(f"usage: {self.prog} --config CONFIG [--section.key VALUE ...]", file=file or sys.stderr)


class CNNCLI(LightningCLI):
    """LightningCLI with the datamodule → model links and a ``test_after_fit`` switch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", _ConciseParser)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        # Never overwrite a run's saved config; every run gets its own version folder.
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        super().__init__(ImageClassifier, ImageDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Always-on callbacks, configured under their own top-level keys (`checkpoint:`), so an experiment's
        # `trainer.callbacks` list only holds what it adds (EarlyStopping, fine-tuning...).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": True,  # best + last
                "checkpoint.filename": "best-epoch{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
                # Both checkpoint callbacks write `last.ckpt` (the newest state); no `last-v1.ckpt` copies.
                "checkpoint.enable_version_counter": False,
            }
        )
        # Fault tolerance: a second checkpoint that only keeps `last.ckpt`, written every N training steps and/or
        # every interval of time, so a killed or pre-empted run loses little (`--ckpt_path last` resumes it).
        # Off by default; `checkpoint:` keeps choosing the best model at validation time.
        parser.add_lightning_class_args(ModelCheckpoint, "resume_checkpoint")
        parser.set_defaults(
            {
                "resume_checkpoint.save_top_k": 0,
                "resume_checkpoint.save_last": True,
                "resume_checkpoint.every_n_train_steps": 0,
                "resume_checkpoint.every_n_epochs": 0,
                "resume_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(KerasModelSummary, "summary")
        parser.add_lightning_class_args(TrainingPlots, "plots")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the best checkpoint (or the final weights if none was saved) on the test split.",
        )
        links = {
            "model.init_args.num_classes": lambda dm: dm.num_classes,
            "model.init_args.input_shape": lambda dm: dm.dims,
            "model.init_args.net.init_args.num_classes": lambda dm: dm.num_classes,
            "model.init_args.net.init_args.in_channels": lambda dm: dm.dims[0],
            "model.init_args.net.init_args.input_size": lambda dm: dm.dims[1:],
        }
        for target, compute in links.items():
            parser.link_arguments("data", target, compute_fn=compute, apply_on="instantiate")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a constructor rejected a config value: keep its message, drop the wrapping
            raise ConfigError(_innermost_value_error(err)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        _share_log_version(trainer)
        # Runs resumed mid-epoch draw the same random numbers as the run they continue.
        trainer.callbacks.append(RNGStateCheckpoint())
        trainer.callbacks.append(_RankZeroLogVersion())
        return trainer

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = _latest_checkpoint(self.trainer)

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit", default=False):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path: Optional[str] = "best" if checkpoint is not None and checkpoint.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def _share_log_version(trainer: Trainer) -> None:
    """Make every logger write into the first logger's version folder.

    CSVLogger and TensorBoardLogger each pick "the next free version_N" on their own; given the same save_dir,
    the second one sees the folder the first just made and takes N+1, splitting one run over two folders.
    """
    loggers = [lg for lg in trainer.loggers if hasattr(lg, "_version")]
    if len(loggers) < 2:
        return
    version = loggers[0].version
    for logger in loggers[1:]:
        if logger._version is None:
            logger._version = version


class _RankZeroLogVersion(Callback):
    """Under DDP, give every rank's loggers rank 0's version number.

    Each process picks "the next free version_N" on its own when the CLI builds the trainer, before the processes
    know of each other; a rank that looks after rank 0 has created ``version_N`` picks ``N+1``. Rank 0 alone writes
    logs, checkpoints and the config, and the checkpoint folder is broadcast from it, but nothing else may depend
    on the other ranks' guess: they get rank 0's number as soon as the process group exists.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.world_size < 2:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "_version")]
        if loggers:
            version = trainer.strategy.broadcast(loggers[0].version, src=0)
            for logger in loggers:
                logger._version = version


def _latest_checkpoint(trainer: Trainer) -> Optional[str]:
    """The newest resumable checkpoint of this experiment, for ``--ckpt_path last``.

    Every run logs into its own ``version_N`` folder, so Lightning's own ``last`` (which looks only in the new
    run's empty folder) would silently start from scratch. Candidates: ``last*.ckpt`` in every version folder of
    the first logger (and in explicit checkpoint ``dirpath``s), and SLURM pre-emption checkpoints
    (``hpc_ckpt_*.ckpt``) in ``trainer.default_root_dir``; the most recently written wins. ``None`` (start from
    scratch, with a warning) when there is none, so the same command starts and resumes a pre-emptible job.
    """
    folders: list[Path] = [Path(trainer.default_root_dir)]
    patterns = ["hpc_ckpt_*.ckpt"]
    if trainer.loggers and getattr(trainer.loggers[0], "root_dir", None):
        folders.append(Path(trainer.loggers[0].root_dir))
        patterns.append("version_*/checkpoints/last*.ckpt")
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            folders.append(Path(callback.dirpath))
    found = [path for folder in folders for pattern in patterns + ["last*.ckpt"] for path in folder.glob(pattern)]
    if not found:
        rank_zero_warn(
            f"--ckpt_path last: no last*.ckpt or hpc_ckpt_*.ckpt under {', '.join(map(str, folders))}; "
            "training starts from scratch."
        )
        return None
    return str(max(found, key=lambda path: path.stat().st_mtime_ns))


class ConfigError(ValueError):
    """A config value that a model, datamodule or callback constructor rejected."""


# Errors whose message already names the bad value and the fix: the command line prints just that line.
_USER_ERRORS = (ConfigError, DataNotFoundError, CorruptDataError, WeightsMismatchError, WeightsUnavailableError)


def _innermost_value_error(err: BaseException) -> str:
    """The message of the deepest ValueError in ``err``'s chain: jsonargparse wraps the constructor's own error
    (which names the value and the fix) in a "does not validate against any of the Union subtypes" report."""
    message, current = str(err), err
    while current is not None:
        if isinstance(current, ValueError):
            message = str(current)
        current = current.__cause__ or current.__context__
    return message


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``cli.py`` and the ``lightning-cnn`` console script.

    A bad config value, missing or corrupt data, or unusable weights end the run with one ``error: …`` line
    (exit status 2) instead of a traceback; their messages say what to change.
    """
    try:
        CNNCLI(args=args)
    except _USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
