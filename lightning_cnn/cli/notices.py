"""What the CLI keeps out of a run's output: Lightning's warnings a user cannot act on, and its info notices that
the run's own header replaces (shown again with ``--log_level info``)."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["lightning_warnings_hidden", "show_notices_at"]

# Lightning notices that appear on every run of this CLI and that a user cannot act on; silenced while the CLI runs
# (see CNNCLI.__init__), never for the rest of the process.
_LIGHTNING_NOTICES = (
    # Raised inside Lightning itself (its pytree helper) on every predict.
    r".*isinstance\(treespec, LeafSpec\).*",
    # Every run logs into a new version folder, so a checkpoint restored by `--ckpt_path` always comes from another
    # folder than the run's: Lightning's notice about it would appear on every test, predict and resume.
    r".*The dirpath has changed from.*",
    # A short run (a smoke test, fast_dev_run) has fewer batches than Lightning's logging interval.
    r".*is smaller than the logging interval.*",
)
# Lightning's info notices ("GPU available: …", "Seed set to 42", tips about other products): hidden unless
# --log_level info, since the run's own header says what it uses. Warnings on these loggers still show.
_NOTICE_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
    "lightning_fabric.utilities.distributed",
)
# The notices those loggers print that the header replaces; other messages (restoring a checkpoint...) still show.
_NOTICE_STARTS = (
    "GPU available",
    "TPU available",
    "HPU available",
    "💡 Tip",
    "Trainer already configured",
    "Seed set",
    "Initializing distributed",
    "distributed_backend=",
)


def _hide_notices(record: logging.LogRecord) -> bool:
    # Other processes prefix their rank; the DDP notice comes inside a ruler of dashes.
    message = re.sub(r"^[\s-]*(\[rank: \d+\]\s*)?", "", str(record.msg))
    return not message.startswith(_NOTICE_STARTS)


@contextmanager
def lightning_warnings_hidden() -> Iterator[None]:
    """Within the block, Lightning's warnings in :data:`_LIGHTNING_NOTICES` are not shown."""
    with warnings.catch_warnings():
        for notice in _LIGHTNING_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        yield


def show_notices_at(level: str) -> None:
    """Hide Lightning's info notices unless ``level`` (the run's ``--log_level``) is ``info`` or ``debug``; at
    ``error`` or ``debug``, set those loggers to it."""
    level = level.upper()
    for name in _NOTICE_LOGGERS:
        logger = logging.getLogger(name)
        logger.removeFilter(_hide_notices)
        if level not in ("INFO", "DEBUG"):
            logger.addFilter(_hide_notices)  # the notices only: what it restores from, for one, still shows
        if level in ("ERROR", "DEBUG"):
            logger.setLevel(level)
