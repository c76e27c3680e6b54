"""Keras' ``ImageDataGenerator`` on a whole float batch on the training device (``affine_grid`` + ``grid_sample``).

For small images, where per-sample work in a DataLoader worker costs more than the model's step. Needs no
Albumentations or OpenCV.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cnn.augmentation.keras import ImageDataGeneratorArgs, KerasParams, _centered_matrix, _check_fill_mode
from lightning_cnn.augmentation.seeding import draw_seed

__all__ = ["BatchedKerasAugment"]

# grid_sample has no periodic padding; 'constant' is done by shifting the batch by the fill value (see below).
_GRID_PADDING = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (N, 1, H, W), align_corners=False)`` by broadcasting: on CPU, ``affine_grid`` costs
    four times the ``grid_sample`` it feeds for 28×28 batches."""
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    grid = t[:, :, 0] * xs[None, None, None, :] + t[:, :, 1] * ys[None, None, :, None] + t[:, :, 2]  # (N, 2, H, W)
    return grid.permute(0, 2, 3, 1)


class BatchedKerasAugment:
    """Keras' ``ImageDataGenerator`` geometry and flips on a whole ``(N, C, H, W)`` float batch, on its device.

    One ``affine_grid`` + ``grid_sample`` (bilinear) per batch with a random matrix per sample; the flips are folded
    into the matrix. The random draws come from a seeded CPU generator, so a seed gives the same batch on CPU and
    GPU. ``nearest`` fill is the grid's border padding (edge replicate), which commutes with per-channel
    normalization, so the batch may be normalized already.

    Args:
        seed: Seed of the draws; ``None`` takes one from torch's global generator.
        mean: Per-channel mean the batch was normalized with (``(1, C, 1, 1)`` or ``None`` for plain /255).
        std: Per-channel std, with ``mean``.
        **keras_args: The arguments of :class:`~lightning_cnn.augmentation.ImageDataGeneratorArgs`; ``fill_mode``
            ``"nearest"``, ``"constant"`` or ``"reflect"`` (grid sampling cannot wrap), ``cval`` mapped through
            ``mean``/``std``.

    Raises:
        ValueError: On a bad range or ``fill_mode="wrap"``.
    """

    def __init__(
        self,
        *,
        seed: Optional[int] = None,
        mean: Optional[Tensor] = None,
        std: Optional[Tensor] = None,
        **keras_args: Any,
    ) -> None:
        self.keras = ImageDataGeneratorArgs(**keras_args)
        _check_fill_mode(self.keras.fill_mode, tuple(_GRID_PADDING))
        fill = torch.tensor(self.keras.cval / 255.0)
        if mean is not None:
            fill = (fill - mean) / std
        self.fill = fill.reshape(1, -1, 1, 1) if fill.ndim else fill.reshape(1, 1, 1, 1)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, *keys: int) -> None:
        """Draw the next batch from ``draw_seed(seed, *keys)`` (e.g. the epoch and the batch number)."""
        self.generator.manual_seed(draw_seed(self.seed, *keys))

    def sample(self, n: int, height: int, width: int) -> KerasParams:
        """Draw the parameters of ``n`` images (CPU tensors)."""
        u = torch.rand(n, 7, generator=self.generator, dtype=torch.float64)
        params = self.keras.params_from_uniform(u, height, width)
        params.flip_x = (u[:, 5] < 0.5) if self.keras.horizontal_flip else torch.zeros(n, dtype=torch.bool)
        params.flip_y = (u[:, 6] < 0.5) if self.keras.vertical_flip else torch.zeros(n, dtype=torch.bool)
        return params

    def apply(self, x: Tensor, params: KerasParams) -> Tensor:
        """Warp ``x`` with given parameters (deterministic; :meth:`__call__` draws them)."""
        n, _, height, width = x.shape

        # The matrices are made in numpy: for one batch, ~10x faster than the same few dozen tiny torch ops.
        def column(value: Any) -> np.ndarray:  # one float64 per image
            value = value.detach().cpu().numpy() if isinstance(value, Tensor) else value
            return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))

        params = KerasParams(
            *(column(v) for v in (params.angle, params.shift_x, params.shift_y, params.zoom_x, params.zoom_y)),
            *(column(0.0 if v is None else v) for v in (params.flip_x, params.flip_y)),
        )
        ((a, b), (c, d)), (tx, ty) = _centered_matrix(params, np)
        # Pixels → affine_grid's [-1, 1] units (align_corners=False: x_norm = 2·x_centred / W); b and c mix axes.
        theta = np.stack(
            [
                np.stack([a, b * height / width, tx * 2.0 / width], -1),
                np.stack([c * width / height, d, ty * 2.0 / height], -1),
            ],
            1,
        )
        theta = torch.from_numpy(theta.astype(np.float32)).to(x.device)
        grid = _affine_grid(theta, height, width)
        padding = _GRID_PADDING[self.keras.fill_mode]
        if padding == "zeros":  # constant fill: sample (x - fill) with zero padding, then add fill back
            fill = self.fill.to(x.device, x.dtype)
            return F.grid_sample(x - fill, grid.to(x.dtype), "bilinear", padding, align_corners=False) + fill
        return F.grid_sample(x, grid.to(x.dtype), "bilinear", padding, align_corners=False)

    def __call__(self, x: Tensor) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], x.shape[-2], x.shape[-1]))
