"""Output paths that never replace an earlier file, and files that are written whole or not at all."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["current_umask", "free_path", "written_whole"]


def free_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``stem_N.suffix`` beside it."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` to write to; rename it over ``path`` once the block completes, and
    delete it if the block fails, so a full disk or a crash never leaves a truncated ``path``. The name is this
    process' and thread's own, so writers of the same file at once (two sweep workers ending together) each replace it
    whole: the last rename wins."""
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask (the permission bits new files and folders leave out), read without changing it for
    longer than the call."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
