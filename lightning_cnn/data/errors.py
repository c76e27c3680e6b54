"""The errors raised when a dataset's files are missing or cannot be parsed (the CLI prints them as one line)."""

from __future__ import annotations

__all__ = ["CorruptDataError", "DataNotFoundError"]


class DataNotFoundError(RuntimeError):
    """The dataset's files are neither present nor downloadable."""


class CorruptDataError(RuntimeError):
    """A dataset file exists but cannot be parsed."""
