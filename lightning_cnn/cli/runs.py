"""A run's folder and files: ``runs/<experiment>/version_N`` shared by every logger and process, its config written
whole, the newest checkpoint to resume from.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.paths import written_whole

__all__ = ["RUNS_DIR", "RunFolder"]

#: Where runs log: ``runs/<experiment>/version_N`` (see CNNCLI._default_loggers).
RUNS_DIR = "runs"
# What every run logs to unless its config says otherwise: metrics.csv (whole-file safe) and TensorBoard events.
_DEFAULT_LOGGERS = ("lightning_cnn.loggers.CSVLogger", "pytorch_lightning.loggers.TensorBoardLogger")


class _SaveConfigWhole(SaveConfigCallback):
    """Lightning's config saver, writing ``config.yaml`` under a temporary name and renaming it once complete, as
    every other file of a run is written: a full disk never leaves a truncated config beside the checkpoints."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        parser_save = self.parser.save

        def save_whole(config: Namespace, path: str, **kwargs: Any) -> None:
            if "skip_none" in kwargs:  # Lightning still passes it; jsonargparse 4.49 renamed it skip_unset
                kwargs["skip_unset"] = kwargs.pop("skip_none")
            with written_whole(Path(path)) as partial:
                parser_save(config, str(partial), **kwargs)

        self.parser.save = save_whole
        try:
            super().setup(trainer, pl_module, stage)
        except RuntimeError:
            # Lightning refuses to overwrite a config.yaml already in the run's folder, with a traceback. That
            # happens when the folder is not a fresh version_N: `trainer.logger: false` makes it
            # trainer.default_root_dir (the working folder unless set).
            existing = Path(trainer.log_dir or trainer.default_root_dir) / self.config_filename
            if not existing.is_file():
                raise
            raise ConfigError(
                f"{existing} is already there (a previous run's config, kept as it is); give this run a folder of "
                "its own with --trainer.default_root_dir DIR, or keep the default loggers (runs/<experiment>/"
                "version_N)."
            ) from None
        finally:
            self.parser.save = parser_save


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
    run's empty folder) would silently start from scratch. Candidates: SLURM pre-emption checkpoints
    (``hpc_ckpt_*.ckpt``) and ``last*.ckpt`` in ``trainer.default_root_dir``, and ``last*.ckpt`` either in the
    checkpoint callbacks' explicit ``dirpath``s — when one is given, those folders are the run's own (a SLURM job's
    folder, say) and no other run's checkpoints are considered — or else in every version folder of the first
    logger. The most recently written wins. ``None`` (start from scratch, with a warning) when there is none, so
    the same command starts and resumes a pre-emptible job.
    """
    folders: list[Path] = [Path(trainer.default_root_dir)]
    patterns = ["hpc_ckpt_*.ckpt", "last*.ckpt"]
    explicit = [Path(c.dirpath) for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
    found = [path for folder in folders + explicit for pattern in patterns for path in folder.glob(pattern)]
    if not explicit and trainer.loggers and getattr(trainer.loggers[0], "root_dir", None):
        root = Path(trainer.loggers[0].root_dir)
        folders.append(root)
        found += root.glob("version_*/checkpoints/last*.ckpt")
    if not found:
        rank_zero_warn(
            f"--ckpt_path last: no last*.ckpt or hpc_ckpt_*.ckpt under {', '.join(map(str, folders + explicit))}; "
            "training starts from scratch."
        )
        return None
    return str(max(found, key=lambda path: path.stat().st_mtime_ns))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass(frozen=True)
class RunFolder:
    """The run's own folder (``trainer.log_dir``), known before anything is written: checked for writing first,
    and removed again if the run fails before saving a checkpoint."""

    path: Optional[Path]
    existed: bool = False
    anchor: Optional[Path] = None  # the nearest folder that existed before the run

    @classmethod
    def of(cls, trainer: Trainer) -> RunFolder:
        if not trainer.log_dir:
            return cls(None)
        path = Path(trainer.log_dir)
        return cls(path, path.exists(), _nearest_existing(path))

    def check_writable(self) -> None:
        """Raises: ConfigError: If the folder cannot be created or written, naming it and the fix."""
        if self.path is None:
            return
        folder = _nearest_existing(self.path)
        try:
            if not folder.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(folder))
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ConfigError(
                f"cannot write the run's folder {self.path}: {folder} is not writable ({err.strerror}); choose "
                "another folder (the logger's save_dir, or trainer.default_root_dir)."
            ) from None

    def remove_if_unfinished(self) -> None:
        """A run that failed before writing a checkpoint leaves no half-filled ``version_N`` folder behind."""
        folder = self.path
        if folder is None or self.existed or not folder.is_dir() or any(folder.rglob("*.ckpt")):
            return
        shutil.rmtree(folder, ignore_errors=True)
        parent = folder.parent  # and the empty experiment folders this run created above it
        while parent != self.anchor and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
