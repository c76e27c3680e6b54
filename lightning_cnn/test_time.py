"""Test-time augmentation: the shifted and mirrored views whose logits evaluation averages."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["test_time_views"]


def test_time_views(x: Tensor, shift: int, flip: bool) -> list[Tensor]:
    """``x`` (N, C, H, W), plus its copies moved ``shift`` pixels each way (edges repeated), plus the mirror of
    each of those when ``flip``."""
    views = [x]
    if shift:
        views += [_shifted(x, dy, dx) for dy, dx in ((0, shift), (0, -shift), (shift, 0), (-shift, 0))]
    if flip:
        views += [view.flip(-1) for view in views]
    return views


def _shifted(x: Tensor, dy: int, dx: int) -> Tensor:
    """``x`` (N, C, H, W) moved ``dy`` pixels down and ``dx`` right, the edge rows and columns repeated into the gap."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + height, left : left + width]
