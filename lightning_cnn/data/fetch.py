"""Downloading a dataset into its folder so that no process ever sees half of it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["download_into"]


def download_into(target: Path, download: Callable[[Path], None]) -> None:
    """Run ``download(folder)`` into a private folder beside the data, then rename what it wrote into ``target``
    (atomic on one filesystem): processes on several nodes downloading into one shared ``target`` never read or
    overwrite each other's partial files, and a failed download leaves nothing behind, not even the folders it
    created.

    Raises:
        OSError, RuntimeError: What ``download`` raised (a URLError is an OSError), after cleaning up.
    """
    created = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".download-", dir=target))
    try:
        download(private)
        for entry in private.iterdir():
            if not (target / entry.name).exists():  # else another process finished first: keep its copy
                os.rename(entry, target / entry.name)
    except (OSError, RuntimeError):
        shutil.rmtree(private, ignore_errors=True)
        for folder in created:  # the folders this download created, if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    shutil.rmtree(private, ignore_errors=True)
