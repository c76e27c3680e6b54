"""Keras' ``ImageDataGenerator`` geometry: its arguments, its random draws and its affine matrix.

Plain numpy (and torch through the same code): no Albumentations or OpenCV, so the batched path loads fast.

Keras' conventions kept here (keras ``image/affine_transformations.py``, ``ImageDataGenerator.random_transform``):
the matrix maps *output* pixels to the *input* pixels they are sampled from, about the centre ``(n - 1) / 2``;
zoom factors ``zx, zy ~ U(1 - z, 1 + z)`` independently, and a factor above 1 samples a larger area, so the object
gets smaller (Albumentations' ``Affine(scale=s)`` is the inverse: ``s > 1`` enlarges); a shift ``t`` samples at
``out + t``, so the content moves by ``-t``; flips come after the affine part, each with probability 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args

import numpy as np

__all__ = ["SLIDES_IMAGE_DATA_GENERATOR", "FillMode", "ImageDataGeneratorArgs", "KerasParams", "keras_pixel_matrix"]

FillMode = Literal["nearest", "constant", "reflect", "wrap"]
# The slides' ImageDataGenerator(rotation_range=20, zoom_range=0.15, width_shift_range=0.1, height_shift_range=0.1,
# horizontal_flip=True, vertical_flip=True): `KerasAugmentation(**SLIDES_IMAGE_DATA_GENERATOR)`.
SLIDES_IMAGE_DATA_GENERATOR = dict(
    rotation_range=20,
    zoom_range=0.15,
    width_shift_range=0.1,
    height_shift_range=0.1,
    horizontal_flip=True,
    vertical_flip=True,
)
_FLIPS = ("horizontal_flip", "vertical_flip")

# What each Keras range means, for the message when a value is refused.
_RANGE_HINTS = {
    "rotation_range": "degrees >= 0; angles are drawn from [-rotation_range, rotation_range]",
    "width_shift_range": "a number >= 0: a fraction of the width below 1, pixels from 1 up",
    "height_shift_range": "a number >= 0: a fraction of the height below 1, pixels from 1 up",
}


def _zoom_bounds(zoom_range: Union[float, Sequence[float]]) -> tuple[float, float]:
    """Keras: a float ``z`` means ``[1 - z, 1 + z]``; a pair is ``[lower, upper]``."""
    if isinstance(zoom_range, (int, float)):
        if not 0 <= zoom_range < 1:
            raise ValueError(f"zoom_range={zoom_range}; use a float in [0, 1) or a pair [lower, upper] of factors > 0.")
        return 1.0 - float(zoom_range), 1.0 + float(zoom_range)
    bounds = tuple(float(z) for z in zoom_range)
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise ValueError(
            f"zoom_range={list(zoom_range)}; use a float in [0, 1) or a pair [lower, upper] of factors > 0."
        )
    return bounds  # type: ignore[return-value]


def _check_range(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}={value!r}; use {_RANGE_HINTS[name]}.")
    return float(value)


def _check_fill_mode(fill_mode: str, allowed: Sequence[str]) -> str:
    if fill_mode not in allowed:
        raise ValueError(
            f"fill_mode={fill_mode!r}; choose one of {', '.join(repr(m) for m in allowed)} (Keras' names)."
        )
    return fill_mode


class KerasParams:
    """The draws of ``ImageDataGenerator.random_transform`` for a batch (tensors or arrays of shape ``(N,)``).

    ``angle`` in degrees; ``shift_x``/``shift_y`` in pixels along the width/height, as *sampling offsets* (content
    moves by minus the shift, as in Keras); ``zoom_x``/``zoom_y`` Keras zoom factors (> 1 makes the object
    smaller); ``flip_x``/``flip_y`` booleans (horizontal/vertical flip after the affine part).
    """

    def __init__(self, angle, shift_x, shift_y, zoom_x, zoom_y, flip_x=None, flip_y=None) -> None:  # noqa: ANN001
        self.angle, self.shift_x, self.shift_y = angle, shift_x, shift_y
        self.zoom_x, self.zoom_y = zoom_x, zoom_y
        self.flip_x, self.flip_y = flip_x, flip_y


@dataclasses.dataclass(frozen=True)
class ImageDataGeneratorArgs:
    """The geometric arguments of Keras' ``ImageDataGenerator``, checked: the one place they are listed.

    :class:`~lightning_cnn.augmentation.KerasAffine`, :func:`~lightning_cnn.augmentation.keras_pipeline` and
    :class:`~lightning_cnn.augmentation.BatchedKerasAugment` take them as keyword arguments and build this;
    :class:`~lightning_cnn.augmentation.KerasAugmentation` extends it.

    Args:
        rotation_range: Degrees; the angle is drawn from ``[-rotation_range, rotation_range]``.
        zoom_range: ``z`` for factors ``[1 - z, 1 + z]`` per axis, or a pair ``[lower, upper]``; factors > 1 zoom
            *out* (Keras' direction).
        width_shift_range: Fraction of the width (< 1) or pixels (≥ 1); as in Keras, an int ``n`` ≥ 1 shifts by
            whole pixels in ``(-n, n)`` (so ``1`` never shifts) and a float ≥ 1 by any amount in ``[-n, n]``.
        height_shift_range: The same for the height.
        horizontal_flip: Flip left-right with probability 0.5.
        vertical_flip: Flip upside down with probability 0.5.
        fill_mode: Keras' ``"nearest"`` (repeat the edge pixel), ``"constant"``, ``"reflect"`` or ``"wrap"``.
        cval: Fill value for ``"constant"``, in pixel units (0-255).

    Raises:
        ValueError: On a negative range, a bad zoom range or an unknown ``fill_mode``.
    """

    rotation_range: float = 0.0
    zoom_range: Union[float, tuple[float, float]] = 0.0
    width_shift_range: Union[int, float] = 0.0
    height_shift_range: Union[int, float] = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: FillMode = "nearest"
    cval: float = 0.0

    def __post_init__(self) -> None:
        _check_range(self.rotation_range, "rotation_range")
        _zoom_bounds(self.zoom_range)
        _check_range(self.width_shift_range, "width_shift_range")
        _check_range(self.height_shift_range, "height_shift_range")
        _check_fill_mode(self.fill_mode, get_args(FillMode))

    def as_kwargs(self, flips: bool = True) -> dict[str, Any]:
        """These arguments by name (also on a subclass, only these); ``flips=False`` leaves out the flips."""
        names = [f.name for f in dataclasses.fields(ImageDataGeneratorArgs)]
        return {name: getattr(self, name) for name in names if flips or name not in _FLIPS}

    def params_from_uniform(self, u, height: int, width: int) -> KerasParams:  # noqa: ANN001
        """Map uniform draws ``u[..., 0:5]`` in [0, 1) to Keras' parameters (numpy or torch alike)."""
        lo, hi = _zoom_bounds(self.zoom_range)
        return KerasParams(
            angle=(2 * u[..., 0] - 1) * float(self.rotation_range),
            shift_x=_shift(u[..., 1], self.width_shift_range, width),
            shift_y=_shift(u[..., 2], self.height_shift_range, height),
            zoom_x=lo + u[..., 3] * (hi - lo),
            zoom_y=lo + u[..., 4] * (hi - lo),
        )


def _shift(u, shift_range: Union[int, float], size: int):  # noqa: ANN001, ANN202
    """Keras' shift from a uniform draw ``u`` in [0, 1): an int range ``n`` ≥ 1 is ``choice(n) * ±1`` whole pixels;
    otherwise uniform in ``[-r, r]``, times the side when ``r < 1`` (a fraction of it)."""
    if isinstance(shift_range, int) and not isinstance(shift_range, bool) and shift_range >= 1:
        m = (u * (2 * shift_range)) // 1  # 0 … 2n-1: the first n negative, the last n positive
        return (m % shift_range) * (2 * (m >= shift_range) - 1)
    shift_range = float(shift_range)
    return (2 * u - 1) * shift_range * (size if shift_range < 1 else 1)


def _centered_matrix(params: KerasParams, xp) -> tuple:  # noqa: ANN001
    """Keras' ``rotation @ shift @ zoom`` in centred (x = column, y = row) coordinates: ``in = L @ out + t``.

    Written once for numpy (per sample) and torch (batched) — ``xp`` is the module. Keras 3 builds
    ``[[cos, -sin], [sin, cos]]`` in (row, column) order and swaps rows and columns before sampling, so in (x, y)
    the matrix keeps that form: a positive angle turns the content counter-clockwise on screen (checked against
    ``ImageDataGenerator.apply_transform`` by ``benchmarks/keras_augment_check.py``).
    """
    theta = params.angle * (math.pi / 180.0)
    cos, sin = xp.cos(theta), xp.sin(theta)
    fx = 1.0 if params.flip_x is None else 1.0 - 2.0 * params.flip_x  # a flip after the transform negates the axis
    fy = 1.0 if params.flip_y is None else 1.0 - 2.0 * params.flip_y
    zx, zy = params.zoom_x * fx, params.zoom_y * fy
    linear = ((cos * zx, -sin * zy), (sin * zx, cos * zy))
    offset = (cos * params.shift_x - sin * params.shift_y, sin * params.shift_x + cos * params.shift_y)
    return linear, offset


def keras_pixel_matrix(params: KerasParams, height: int, width: int) -> np.ndarray:
    """The ``2×3`` matrix mapping output pixel ``(x, y)`` to the input position it samples (OpenCV's inverse map)."""
    ((a, b), (c, d)), (tx, ty) = _centered_matrix(params, np)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0  # Keras' transform_matrix_offset_center: pixel centres
    return np.array(
        [[a, b, tx + cx - a * cx - b * cy], [c, d, ty + cy - c * cx - d * cy]],
        dtype=np.float64,
    )
