"""Training-time augmentation: any Albumentations pipeline from YAML, and Keras' ImageDataGenerator in two forms.

Three pieces, all train-only (validation and test batches are only resized and normalized by the datamodule):

- :func:`build_pipeline` turns a hand-written list of transforms into an ``albumentations.Compose``, checking every
  name and argument (Albumentations 2.x only *warns* about unknown or renamed 1.x arguments and drops them).
  YAML format — one entry per transform, ``Name: {arguments}`` (or just ``Name``)::

      - Affine: {rotate: [-20, 20], border_mode: BORDER_REPLICATE, p: 1.0}
      - HorizontalFlip          # default arguments
      - OneOf:
          transforms: [GaussNoise, {Blur: {blur_limit: 3}}]
          p: 0.3

  Names are Albumentations classes, :class:`KerasAffine`, or dotted paths to a transform class; strings
  ``BORDER_*`` / ``INTER_*`` stand for the OpenCV constants. Albumentations' own serialisation
  (``A.to_dict(pipeline)``: ``{"transform": {"__class_fullname__": ...}}``) is read as well.
- :class:`KerasAffine`: the geometry of ``ImageDataGenerator.random_transform`` as one Albumentations transform —
  the same random draws and the same matrix as Keras (rotation, shift, per-axis zoom about the image centre,
  bilinear, ``fill_mode``), applied to every image.
- :class:`BatchedKerasAugment`: the same transform plus the flips on a whole float batch on the training device
  (``affine_grid`` + ``grid_sample``), for small images where per-sample work in a worker costs more than the
  model's step.

The YAML-facing choices for a datamodule's ``augmentation:`` are :class:`KerasAugmentation` (the slides'
``ImageDataGenerator`` arguments, ``mode: per_sample`` or ``batched``) and :class:`AlbumentationsAugmentation`
(any pipeline, per sample).

Keras' conventions kept here (keras ``image/affine_transformations.py``, ``ImageDataGenerator.random_transform``):
the matrix maps *output* pixels to the *input* pixels they are sampled from, about the centre ``(n - 1) / 2``;
zoom factors ``zx, zy ~ U(1 - z, 1 + z)`` independently, and a factor above 1 samples a larger area, so the object
gets smaller (Albumentations' ``Affine(scale=s)`` is the inverse: ``s > 1`` enlarges); a shift ``t`` samples at
``out + t``, so the content moves by ``-t``; flips come after the affine part, each with probability 0.5.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional, Union

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from torch import Tensor

__all__ = [
    "FILL_MODES",
    "AlbumentationsAugmentation",
    "Augmentation",
    "BatchedKerasAugment",
    "KerasAffine",
    "KerasAugmentation",
    "KerasParams",
    "SLIDES_IMAGE_DATA_GENERATOR",
    "build_pipeline",
    "keras_pipeline",
    "keras_pixel_matrix",
    "draw_seed",
    "seed_worker",
]

FillMode = Literal["nearest", "constant", "reflect", "wrap"]
#: Keras ``fill_mode`` → OpenCV border mode (scipy.ndimage's modes as Keras uses them: ``nearest`` repeats the
#: edge pixel, ``reflect`` mirrors about the edge ``abcd|dcba``).
FILL_MODES: dict[str, int] = {
    "nearest": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT,
    "wrap": cv2.BORDER_WRAP,
}
# grid_sample has no periodic padding; 'constant' is done by shifting the batch by the fill value (see below).
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
_GRID_PADDING = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}

# Albumentations 1.x argument names that 2.x silently drops (its migration notes), with what to write instead.
_RENAMED_ARGS = {
    "always_apply": "it was removed in Albumentations 2; use p: 1.0",
    "cval": "use fill",
    "value": "use fill",
    "cval_mask": "use fill_mask",
    "mask_value": "use fill_mask",
    "mode": "use border_mode",
}
# OpenCV's thread pool does not survive fork(): a DataLoader worker forked after the main process ran a warp on
# several threads can hang in its first warp. The workers are the parallelism of per-sample augmentation anyway.
cv2.setNumThreads(0)

# These change dtype or size, which the datamodule's own float conversion and batching rely on.
_NOT_PER_SAMPLE = {"Normalize", "ToFloat", "FromFloat", "ToTensorV2"}


# --- Keras' random affine transform ------------------------------------------------------------------------------


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


# What each Keras range means, for the message when a value is refused.
_RANGE_HINTS = {
    "rotation_range": "degrees >= 0; angles are drawn from [-rotation_range, rotation_range]",
    "width_shift_range": "a number >= 0: a fraction of the width below 1, pixels from 1 up",
    "height_shift_range": "a number >= 0: a fraction of the height below 1, pixels from 1 up",
}


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


class _KerasGeometry:
    """Keras' ranges and the draws → matrix computation, shared by the per-sample and batched paths."""

    def __init__(self, rotation_range, zoom_range, width_shift_range, height_shift_range) -> None:  # noqa: ANN001
        self.rotation_range = _check_range(rotation_range, "rotation_range")
        self.zoom_bounds = _zoom_bounds(zoom_range)
        self.width_shift_range = _check_range(width_shift_range, "width_shift_range")
        self.height_shift_range = _check_range(height_shift_range, "height_shift_range")

    def params_from_uniform(self, u, height: int, width: int) -> KerasParams:  # noqa: ANN001
        """Map uniform draws ``u[..., 0:5]`` in [0, 1) to Keras' parameters (numpy or torch alike)."""
        lo, hi = self.zoom_bounds
        # Keras: a shift range below 1 is a fraction of the size, from 1 up it is pixels.
        sx = self.width_shift_range * (width if self.width_shift_range < 1 else 1)
        sy = self.height_shift_range * (height if self.height_shift_range < 1 else 1)
        return KerasParams(
            angle=(2 * u[..., 0] - 1) * self.rotation_range,
            shift_x=(2 * u[..., 1] - 1) * sx,
            shift_y=(2 * u[..., 2] - 1) * sy,
            zoom_x=lo + u[..., 3] * (hi - lo),
            zoom_y=lo + u[..., 4] * (hi - lo),
        )


def _centered_matrix(params: KerasParams, xp) -> tuple:  # noqa: ANN001
    """Keras' ``rotation @ shift @ zoom`` in centred (x = column, y = row) coordinates: ``in = L @ out + t``.

    Written once for numpy (per sample) and torch (batched) — ``xp`` is the module. Keras builds the matrix in
    (row, column) order; swapping the axes turns its ``[[cos, -sin], [sin, cos]]`` into ``[[cos, sin], [-sin, cos]]``.
    """
    theta = params.angle * (math.pi / 180.0)
    cos, sin = xp.cos(theta), xp.sin(theta)
    fx = 1.0 if params.flip_x is None else 1.0 - 2.0 * params.flip_x  # a flip after the transform negates the axis
    fy = 1.0 if params.flip_y is None else 1.0 - 2.0 * params.flip_y
    zx, zy = params.zoom_x * fx, params.zoom_y * fy
    linear = ((cos * zx, sin * zy), (-sin * zx, cos * zy))
    offset = (cos * params.shift_x + sin * params.shift_y, -sin * params.shift_x + cos * params.shift_y)
    return linear, offset


def keras_pixel_matrix(params: KerasParams, height: int, width: int) -> np.ndarray:
    """The ``2×3`` matrix mapping output pixel ``(x, y)`` to the input position it samples (OpenCV's inverse map)."""
    ((a, b), (c, d)), (tx, ty) = _centered_matrix(params, np)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0  # Keras' transform_matrix_offset_center: pixel centres
    return np.array(
        [[a, b, tx + cx - a * cx - b * cy], [c, d, ty + cy - c * cx - d * cy]],
        dtype=np.float64,
    )


class KerasAffine(A.DualTransform):
    """Keras ``ImageDataGenerator``'s random rotation, shift and zoom as an Albumentations transform.

    Same draws as Keras (angle ``U(-r, r)`` degrees; shifts ``U(-w, w)`` × size, or pixels from 1 up; zoom ``zx, zy``
    independently ``U(1 - z, 1 + z)`` with Keras' direction), same matrix about the image centre, bilinear
    interpolation, and every image transformed (``p=1``). Masks are warped with nearest-neighbour interpolation.

    Args:
        rotation_range: Degrees; the angle is drawn from ``[-rotation_range, rotation_range]``.
        zoom_range: ``z`` for ``[1 - z, 1 + z]``, or ``[lower, upper]``; factors > 1 zoom *out*.
        width_shift_range: Fraction of the width (< 1) or pixels (≥ 1).
        height_shift_range: Fraction of the height (< 1) or pixels (≥ 1).
        fill_mode: Keras' ``"nearest"`` (repeat the edge pixel), ``"constant"``, ``"reflect"`` or ``"wrap"``.
        cval: Fill value for ``"constant"``, in pixel units (0-255).
        p: Probability of applying; Keras applies it to every image.

    Raises:
        ValueError: On a negative range, a bad zoom range or an unknown ``fill_mode``.
    """

    _targets = (A.core.type_definitions.Targets.IMAGE, A.core.type_definitions.Targets.MASK)

    def __init__(
        self,
        rotation_range: float = 0.0,
        zoom_range: Union[float, tuple[float, float]] = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        fill_mode: FillMode = "nearest",
        cval: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self._geometry = _KerasGeometry(rotation_range, zoom_range, width_shift_range, height_shift_range)
        self.rotation_range = rotation_range
        self.zoom_range = zoom_range
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.fill_mode = _check_fill_mode(fill_mode, tuple(FILL_MODES))
        self.cval = cval

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        draws = self._geometry.params_from_uniform(self.random_generator.random(5), height, width)
        return {"matrix": keras_pixel_matrix(draws, height, width)}

    def _warp(self, img: np.ndarray, matrix: np.ndarray, interpolation: int) -> np.ndarray:
        height, width = img.shape[:2]
        out = cv2.warpAffine(
            img,
            matrix,
            (width, height),
            flags=interpolation | cv2.WARP_INVERSE_MAP,  # the matrix maps output to input, as Keras' does
            borderMode=FILL_MODES[self.fill_mode],
            borderValue=(self.cval,) * 4,
        )
        return out.reshape(img.shape)  # OpenCV drops a single channel axis

    def apply(self, img: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        return self._warp(img, matrix, cv2.INTER_LINEAR)  # Keras' interpolation_order=1

    def apply_to_mask(self, mask: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        return self._warp(mask, matrix, cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("rotation_range", "zoom_range", "width_shift_range", "height_shift_range", "fill_mode", "cval")


def keras_pipeline(
    rotation_range: float = 0.0,
    zoom_range: Union[float, tuple[float, float]] = 0.0,
    width_shift_range: float = 0.0,
    height_shift_range: float = 0.0,
    horizontal_flip: bool = False,
    vertical_flip: bool = False,
    fill_mode: FillMode = "nearest",
    cval: float = 0.0,
    seed: Optional[int] = None,
) -> A.Compose:
    """``ImageDataGenerator(...)``'s geometric arguments as an Albumentations pipeline (per sample, uint8 HWC).

    Keras' order: the affine part, then each flip with probability 0.5.
    """
    transforms: list[BasicTransform] = []
    if rotation_range or zoom_range or width_shift_range or height_shift_range:
        transforms.append(
            KerasAffine(rotation_range, zoom_range, width_shift_range, height_shift_range, fill_mode, cval)
        )
    else:
        _zoom_bounds(zoom_range)  # still reject bad values when everything is off
        _check_fill_mode(fill_mode, tuple(FILL_MODES))
    if horizontal_flip:
        transforms.append(A.HorizontalFlip(p=0.5))
    if vertical_flip:
        transforms.append(A.VerticalFlip(p=0.5))
    return _seeded(A.Compose(transforms), seed)


def draw_seed(*keys: int) -> int:
    """A seed made from integers (the augmentation's seed, the epoch, the samples or the batch number).

    Each batch's augmentation is drawn from a generator seeded with what identifies the batch, not from one stream
    running through the epoch: the same batch gets the same draws whichever worker process makes it, with any
    number of workers, and in a run resumed mid-epoch exactly as in the uninterrupted run.
    """
    return int(np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(1)[0])


def _seeded(pipeline: A.Compose, seed: Optional[int]) -> A.Compose:
    """Seed a pipeline with *one* random stream shared by all its transforms.

    ``Compose(seed=s)`` (Albumentations 2.0) gives every transform its own generator seeded with the same ``s``, so
    transforms that draw alike decide alike: ``HorizontalFlip`` and ``VerticalFlip`` would always flip together.
    """
    if seed is not None:
        pipeline.seed = seed
        pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


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
        rotation_range: See :class:`KerasAffine`.
        zoom_range: See :class:`KerasAffine`.
        width_shift_range: See :class:`KerasAffine`.
        height_shift_range: See :class:`KerasAffine`.
        horizontal_flip: Flip left-right with probability 0.5.
        vertical_flip: Flip upside down with probability 0.5.
        fill_mode: ``"nearest"``, ``"constant"`` or ``"reflect"`` (grid sampling cannot wrap).
        cval: Fill value for ``"constant"`` in pixel units (0-255), mapped through ``mean``/``std``.
        seed: Seed of the draws; ``None`` takes one from torch's global generator.
        mean: Per-channel mean the batch was normalized with (``(1, C, 1, 1)`` or ``None`` for plain /255).
        std: Per-channel std, with ``mean``.

    Raises:
        ValueError: On a bad range or ``fill_mode="wrap"``.
    """

    def __init__(
        self,
        rotation_range: float = 0.0,
        zoom_range: Union[float, tuple[float, float]] = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: FillMode = "nearest",
        cval: float = 0.0,
        seed: Optional[int] = None,
        mean: Optional[Tensor] = None,
        std: Optional[Tensor] = None,
    ) -> None:
        self.geometry = _KerasGeometry(rotation_range, zoom_range, width_shift_range, height_shift_range)
        self.horizontal_flip = horizontal_flip
        self.vertical_flip = vertical_flip
        self.fill_mode = _check_fill_mode(fill_mode, tuple(_GRID_PADDING))
        fill = torch.tensor(cval / 255.0)
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
        params = self.geometry.params_from_uniform(u, height, width)
        params.flip_x = (u[:, 5] < 0.5) if self.horizontal_flip else torch.zeros(n, dtype=torch.bool)
        params.flip_y = (u[:, 6] < 0.5) if self.vertical_flip else torch.zeros(n, dtype=torch.bool)
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
        padding = _GRID_PADDING[self.fill_mode]
        if padding == "zeros":  # constant fill: sample (x - fill) with zero padding, then add fill back
            fill = self.fill.to(x.device, x.dtype)
            return F.grid_sample(x - fill, grid.to(x.dtype), "bilinear", padding, align_corners=False) + fill
        return F.grid_sample(x, grid.to(x.dtype), "bilinear", padding, align_corners=False)

    def __call__(self, x: Tensor) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], x.shape[-2], x.shape[-1]))


# --- any Albumentations pipeline from YAML -------------------------------------------------------------------------


def _transform_names() -> list[str]:
    names = [n for n, obj in vars(A).items() if inspect.isclass(obj) and issubclass(obj, (BasicTransform, BaseCompose))]
    return names + ["KerasAffine"]


def _resolve_transform(name: str, where: str) -> type:
    if not isinstance(name, str):
        raise ValueError(f"{where}: transform name {name!r} is not a string; write `- Name: {{arguments}}`.")
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            raise ValueError(f"{where}: cannot import transform {name!r}; check the dotted path.") from None
    elif name == "KerasAffine":
        cls = KerasAffine
    else:
        cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, (BasicTransform, BaseCompose))):
        close = difflib.get_close_matches(name.rpartition(".")[2], _transform_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"{where}: unknown transform {name!r}.{hint} Use an Albumentations 2.x class name "
            "(https://albumentations.ai/docs/), KerasAffine, or a dotted path to a transform class."
        )
    return cls


def _cv2_constant(value: Any) -> Any:
    """``"BORDER_REPLICATE"`` / ``"cv2.INTER_LINEAR"`` → the OpenCV integer, so YAML can name them."""
    if isinstance(value, str):
        name = value.removeprefix("cv2.")
        if name.startswith(("BORDER_", "INTER_")) and hasattr(cv2, name):
            return getattr(cv2, name)
    if isinstance(value, list):
        return [_cv2_constant(v) for v in value]
    return value


def _build_transform(name: str, args: Mapping[str, Any], where: str) -> Any:
    cls = _resolve_transform(name, where)
    label = f"{where} {name}"
    if cls.__name__ in _NOT_PER_SAMPLE:
        raise ValueError(
            f"{label}: not allowed in a training augmentation, the datamodule converts to float and normalizes "
            "itself (data.normalize); remove it."
        )
    if not isinstance(args, Mapping):
        raise ValueError(f"{label}: arguments must be a mapping like {{p: 0.5}}, got {args!r}.")
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    for arg in args:
        if arg in accepted or takes_any:
            continue
        if arg in _RENAMED_ARGS:
            fix = _RENAMED_ARGS[arg]
        else:
            close = difflib.get_close_matches(arg, accepted, n=2)
            fix = f"did you mean {' or '.join(close)}?" if close else f"accepted: {', '.join(accepted)}"
        raise ValueError(f"{label}: unknown argument {arg!r} ({fix}).")
    kwargs = {k: _cv2_constant(v) for k, v in args.items()}
    if "transforms" in kwargs:
        kwargs["transforms"] = _build_list(kwargs["transforms"], f"{label}.transforms")
    if "strict" in accepted and issubclass(cls, BasicTransform):
        # Without strict, Albumentations replaces a value it cannot validate by the defaults with a warning.
        kwargs.setdefault("strict", True)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ValueError(f"{label}({', '.join(f'{k}={v!r}' for k, v in args.items())}): {detail}") from None


def _split_entry(entry: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and "__class_fullname__" in entry:  # Albumentations' own serialisation
        args = {k: v for k, v in entry.items() if k not in ("__class_fullname__", "id")}
        return entry["__class_fullname__"], args
    if isinstance(entry, Mapping) and len(entry) == 1:
        name, args = next(iter(entry.items()))
        return name, {} if args is None else args
    raise ValueError(
        f"{where}: {entry!r} is not a transform entry; write `- Name: {{argument: value}}` (one name per entry)."
    )


def _build_list(entries: Any, where: str) -> list[Any]:
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        raise ValueError(f"{where} must be a list of transforms (`- Name: {{arguments}}`), got {entries!r}.")
    return [_build_transform(*_split_entry(e, f"{where}[{i}]"), f"{where}[{i}]") for i, e in enumerate(entries)]


def build_pipeline(spec: Union[Sequence[Any], Mapping[str, Any]], seed: Optional[int] = None) -> A.Compose:
    """Build an ``albumentations.Compose`` from the YAML format above (or Albumentations' ``to_dict`` output).

    Args:
        spec: A list of ``{Name: {arguments}}`` entries (or bare names), or ``{"transform": {...}}`` as written
            by ``albumentations.to_dict``.
        seed: Seed of the pipeline's random draws (one stream shared by all transforms).

    Raises:
        ValueError: On an unknown transform or argument (naming it, with close matches or the 1.x → 2.x rename),
            or a value Albumentations rejects.
    """
    if isinstance(spec, Mapping) and "transform" in spec:
        root = spec["transform"]
        name, args = _split_entry(root, "transform")
        if name.rpartition(".")[2] not in ("Compose", "Sequential"):
            return _seeded(A.Compose([_build_transform(name, args, "transform")]), seed)
        return _seeded(A.Compose(_build_list(args.get("transforms", []), "transform.transforms")), seed)
    return _seeded(A.Compose(_build_list(spec, "transforms")), seed)


class _CheckedPipeline:
    """Runs a pipeline per sample and checks it keeps the uint8 image and its size, which batching needs."""

    def __init__(self, pipeline: A.Compose) -> None:
        self.pipeline = pipeline
        self.seed = pipeline.seed  # what the pipeline was built with; workers mix it into their own seeds

    def set_random_seed(self, seed: int) -> None:
        _seeded(self.pipeline, seed)

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        out = self.pipeline(image=image)
        result = out["image"]
        if result.dtype != np.uint8 or result.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"the augmentation turned a {image.dtype} {image.shape} image into {result.dtype} {result.shape}; "
                "training augmentations must keep uint8 and the image size (resize with data.image_size, "
                "normalize with data.normalize)."
            )
        return out


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy's and Python's global generators from the worker's own seed.

    Albumentations pipelines draw from their own generators, which the dataset reseeds for every batch (see
    :func:`draw_seed`); this covers a user's transform that draws from the global generators, so workers do not
    all draw alike.
    """
    info = torch.utils.data.get_worker_info()
    worker_seed = info.seed if info is not None else torch.initial_seed()
    seed = draw_seed(worker_seed)
    np.random.seed(seed)
    random.seed(seed)


# --- what a datamodule's `augmentation:` takes ---------------------------------------------------------------------


class Augmentation:
    """Base of the datamodules' ``augmentation:`` option: a per-sample pipeline and/or a batched transform.

    Args:
        seed: Seed of the augmentation draws; ``None`` derives one from torch's global generator (set by
            ``seed_everything``). Each batch's draws are keyed by this seed, the epoch and the batch (see
            :func:`draw_seed`).
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        self.seed = seed

    def resolve_seed(self, rank: int = 0) -> int:
        """The seed to build with; each process of a multi-GPU run augments differently."""
        base = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()))
        return base + rank

    def per_sample_transform(self, seed: int) -> Optional[_CheckedPipeline]:
        """The transform for the training dataset (uint8 HWC → uint8 HWC), or ``None``."""
        return None

    def batch_transform(
        self, seed: int, mean: Optional[Tensor] = None, std: Optional[Tensor] = None
    ) -> Optional[BatchedKerasAugment]:
        """The transform for whole training batches on the device (float ``(N, C, H, W)``), or ``None``."""
        return None


class KerasAugmentation(Augmentation):
    """The slides' ``ImageDataGenerator(...)`` augmentation, per sample or on whole batches.

    Args:
        rotation_range: Degrees, drawn from ``[-rotation_range, rotation_range]``.
        zoom_range: ``z`` for factors ``[1 - z, 1 + z]`` per axis (Keras' direction: > 1 zooms out), or a pair.
        width_shift_range: Fraction of the width (< 1) or pixels (≥ 1).
        height_shift_range: Fraction of the height (< 1) or pixels (≥ 1).
        horizontal_flip: Flip left-right with probability 0.5.
        vertical_flip: Flip upside down with probability 0.5.
        fill_mode: ``"nearest"`` (Keras' default: repeat the edge pixel), ``"constant"``, ``"reflect"``, or
            ``"wrap"`` (per sample only).
        cval: Fill value for ``"constant"``, pixel units 0-255.
        mode: ``"per_sample"``: Albumentations (:class:`KerasAffine` + flips) on each uint8 image in the DataLoader
            workers; ``"batched"``: :class:`BatchedKerasAugment` on each float batch on the training device, after
            the transfer — much faster for small images and small networks.
        seed: See :class:`Augmentation`.

    Raises:
        ValueError: On a bad range, an unknown ``fill_mode``/``mode``, or ``wrap`` with ``batched``.
    """

    def __init__(
        self,
        rotation_range: float = 0.0,
        zoom_range: Union[float, tuple[float, float]] = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: FillMode = "nearest",
        cval: float = 0.0,
        mode: Literal["per_sample", "batched"] = "per_sample",
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(seed)
        if mode not in ("per_sample", "batched"):
            raise ValueError(f"mode={mode!r}; choose 'per_sample' (DataLoader workers) or 'batched' (on the device).")
        self.rotation_range = rotation_range
        self.zoom_range = zoom_range
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.horizontal_flip = horizontal_flip
        self.vertical_flip = vertical_flip
        self.fill_mode = fill_mode
        self.cval = cval
        self.mode = mode
        # Build both once now so a bad value fails when the config is read, not at the first batch.
        keras_pipeline(**self._keras_args())
        if mode == "batched":
            BatchedKerasAugment(**self._keras_args(), seed=0)

    def _keras_args(self) -> dict[str, Any]:
        return dict(
            rotation_range=self.rotation_range,
            zoom_range=self.zoom_range,
            width_shift_range=self.width_shift_range,
            height_shift_range=self.height_shift_range,
            horizontal_flip=self.horizontal_flip,
            vertical_flip=self.vertical_flip,
            fill_mode=self.fill_mode,
            cval=self.cval,
        )

    def per_sample_transform(self, seed: int) -> Optional[_CheckedPipeline]:
        if self.mode != "per_sample":
            return None
        return _CheckedPipeline(keras_pipeline(**self._keras_args(), seed=seed))

    def batch_transform(
        self, seed: int, mean: Optional[Tensor] = None, std: Optional[Tensor] = None
    ) -> Optional[BatchedKerasAugment]:
        if self.mode != "batched":
            return None
        return BatchedKerasAugment(**self._keras_args(), seed=seed, mean=mean, std=std)


class AlbumentationsAugmentation(Augmentation):
    """Any Albumentations pipeline, written in YAML (format: see :func:`build_pipeline`), applied per sample.

    Args:
        transforms: The pipeline: a list of ``{Name: {arguments}}`` entries or bare names, or the dict
            ``albumentations.to_dict`` writes.
        seed: See :class:`Augmentation`.

    Raises:
        ValueError: On an unknown transform or argument, or a value Albumentations rejects.
    """

    def __init__(
        self,
        transforms: Union[list[Union[str, dict[str, Any]]], dict[str, Any]],
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(seed)
        self.transforms = transforms
        build_pipeline(transforms)  # fail when the config is read

    def per_sample_transform(self, seed: int) -> Optional[_CheckedPipeline]:
        return _CheckedPipeline(build_pipeline(self.transforms, seed=seed))
