"""How a datamodule splits its training samples: the validation share (seeded, or Keras' last rows), the training
subset, and the checks of those settings."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["split_indices"]


def split_indices(
    n: int, val_split: Union[int, float], mode: str, train_size: Union[int, float, None], seed: int
) -> tuple[Tensor, Tensor]:
    """Which of ``n`` training samples train and which validate: ``val_split`` of them (a seeded permutation's
    last ones, or in ``"last"`` mode exactly the rows Keras' ``validation_split`` takes), then ``train_size`` of the
    rest, the same on every process.

    Raises:
        ValueError: If ``val_split`` leaves no training sample.
    """
    generator = torch.Generator().manual_seed(seed)
    if mode == "last" and isinstance(val_split, float) and 0 < val_split < 1:
        # Keras' model.fit(validation_split=s): training rows up to floor(n * (1 - s)), validation the rest.
        n_val = n - math.floor(n * (1.0 - val_split))
        if n_val in (0, n):
            raise ValueError(
                f"val_split={val_split} of {n} samples leaves {'no validation' if n_val == 0 else 'no training'} "
                "sample (Keras refuses this split too); use more data or another val_split."
            )
    else:
        n_val = _count(val_split, n)
    if n_val >= n:
        raise ValueError(f"val_split={val_split} leaves no training samples out of {n}; use a smaller value.")
    order = torch.arange(n) if mode == "last" else torch.randperm(n, generator=generator)
    train_idx, val_idx = order[: n - n_val], order[n - n_val :]
    if train_size is not None:
        keep = _count(train_size, len(train_idx))
        train_idx = train_idx[torch.randperm(len(train_idx), generator=generator)[:keep]]
    return train_idx, val_idx


def _check_split_size(value: Union[float, int], name: str, allow_zero: bool) -> None:
    # A whole float >= 1 is a count (200.0 reads as 200 samples), as a YAML number may arrive as a float.
    ok = (isinstance(value, float) and (0.0 < value < 1.0 or (value >= 1 and value.is_integer()))) or (
        isinstance(value, int) and value >= 1
    )
    if allow_zero and value == 0:
        ok = True
    if isinstance(value, bool) or not ok:
        zero = ", or 0 for none" if allow_zero else ""
        raise ValueError(f"{name}={value!r}; use a fraction in (0, 1) or a count >= 1{zero}.")


def _check_classes(classes: Optional[list[int]], total: int, owner: str) -> Optional[list[int]]:
    if classes is None:
        return None
    classes = list(classes)
    bad = [c for c in classes if not 0 <= c < total]
    if bad or len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes={classes} for {owner}; give at least 2 distinct label ids in 0..{total - 1}.")
    return classes


def _count(size: Union[float, int], n: int) -> int:
    return int(round(size * n)) if isinstance(size, float) and size < 1 else min(int(size), n)
