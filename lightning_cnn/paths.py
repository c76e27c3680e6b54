"""Output paths that never replace an earlier file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["free_path"]


def free_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``stem_N.suffix`` beside it."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate
