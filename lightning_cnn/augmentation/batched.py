"""Keras' ``ImageDataGenerator`` on a whole float batch on the training device (``affine_grid`` + ``grid_sample``),
then, optionally, random erasing.

For small images, where per-sample work in a DataLoader worker costs more than the model's step. Needs no
Albumentations or OpenCV.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cnn.augmentation.keras import ImageDataGeneratorArgs, KerasParams, _centered_matrix, _check_fill_mode
from lightning_cnn.augmentation.seeding import draw_seed

__all__ = ["BatchedKerasAugment"]

# Random erasing (Zhong et al., 2017): the rectangle covers this share of the image's area, with this range of
# height/width ratios (drawn on a log scale), as torchvision's and Albumentations' defaults.
ERASING_SCALE = (0.02, 0.33)
ERASING_RATIO = (0.3, 3.3)


def check_probability(value: float, name: str) -> float:
    """``value`` if it is a probability, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r}; use a probability from 0 to 1 (0.5 erases one image in two on average).")
    return float(value)


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

    With ``random_erasing > 0``, each image then has that probability of one rectangle painted black (pixel value
    0, through ``mean``/``std``), 2–33% of its area, height/width ratio 0.3–3.3: random erasing, which is not an
    ``ImageDataGenerator`` argument. Its draws come after the Keras ones, so those stay the same.

    Args:
        seed: Seed of the draws; ``None`` takes one from torch's global generator.
        mean: Per-channel mean the batch was normalized with (``(1, C, 1, 1)`` or ``None`` for plain /255).
        std: Per-channel std, with ``mean``.
        random_erasing: Probability that an image gets one black rectangle (0: none).
        **keras_args: The arguments of :class:`~lightning_cnn.augmentation.ImageDataGeneratorArgs`; ``fill_mode``
            ``"nearest"``, ``"constant"`` or ``"reflect"`` (grid sampling cannot wrap), ``cval`` mapped through
            ``mean``/``std``.

    Raises:
        ValueError: On a bad range, ``fill_mode="wrap"`` or a ``random_erasing`` outside [0, 1].
    """

    def __init__(
        self,
        *,
        seed: Optional[int] = None,
        mean: Optional[Tensor] = None,
        std: Optional[Tensor] = None,
        random_erasing: float = 0.0,
        **keras_args: Any,
    ) -> None:
        self.keras = ImageDataGeneratorArgs(**keras_args)
        _check_fill_mode(self.keras.fill_mode, tuple(_GRID_PADDING))
        self.random_erasing = check_probability(random_erasing, "random_erasing")

        def pixel(value: float) -> Tensor:  # a pixel value in [0, 1] as it reads in the (normalized) batch
            t = torch.tensor(value)
            t = (t - mean) / std if mean is not None else t
            return t.reshape(1, -1, 1, 1) if t.ndim else t.reshape(1, 1, 1, 1)

        self.fill = pixel(self.keras.cval / 255.0)
        self.black = pixel(0.0)
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

    def erase(self, x: Tensor) -> Tensor:
        """Paint one random black rectangle into each image of ``x`` with probability ``random_erasing``."""
        n, _, height, width = x.shape
        u = torch.rand(n, 5, generator=self.generator, dtype=torch.float64)
        area = (ERASING_SCALE[0] + u[:, 0] * (ERASING_SCALE[1] - ERASING_SCALE[0])) * height * width
        log_lo, log_hi = math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])
        ratio = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
        h = (area * ratio).sqrt().round().clamp(1, height)
        w = (area / ratio).sqrt().round().clamp(1, width)
        top = (u[:, 2] * (height - h + 1)).floor()
        left = (u[:, 3] * (width - w + 1)).floor()
        ys = torch.arange(height, dtype=torch.float64)
        xs = torch.arange(width, dtype=torch.float64)
        rows = (ys >= top[:, None]) & (ys < (top + h)[:, None])  # (N, H)
        cols = (xs >= left[:, None]) & (xs < (left + w)[:, None])  # (N, W)
        mask = rows[:, :, None] & cols[:, None, :] & (u[:, 4] < self.random_erasing)[:, None, None]
        return torch.where(mask[:, None].to(x.device), self.black.to(x.device, x.dtype), x)

    def __call__(self, x: Tensor) -> Tensor:
        out = self.apply(x, self.sample(x.shape[0], x.shape[-2], x.shape[-1]))
        return self.erase(out) if self.random_erasing else out
