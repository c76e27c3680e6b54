"""Keras' ``ImageDataGenerator`` per sample, with Albumentations and OpenCV on uint8 ``(H, W, C)`` images.

:class:`KerasAffine` is the geometry of ``ImageDataGenerator.random_transform`` as one Albumentations transform —
the same random draws and the same matrix as Keras (rotation, shift, per-axis zoom about the image centre,
bilinear, ``fill_mode``), applied to every image; :func:`keras_pipeline` adds the flips.
"""

from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BasicTransform

from lightning_cnn.augmentation.batched import ERASING_RATIO, ERASING_SCALE, check_probability
from lightning_cnn.augmentation.keras import ImageDataGeneratorArgs, keras_pixel_matrix
from lightning_cnn.augmentation.seeding import _seeded

__all__ = ["KerasAffine", "keras_pipeline"]

#: Keras ``fill_mode`` → OpenCV border mode (scipy.ndimage's modes as Keras uses them: ``nearest`` repeats the
#: edge pixel, ``reflect`` mirrors about the edge ``abcd|dcba``).
_BORDER_MODES: dict[str, int] = {
    "nearest": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT,
    "wrap": cv2.BORDER_WRAP,
}


class KerasAffine(A.DualTransform):
    """Keras ``ImageDataGenerator``'s random rotation, shift and zoom as an Albumentations transform.

    Same draws as Keras (angle ``U(-r, r)`` degrees; shifts ``U(-w, w)`` × size, or pixels from 1 up; zoom ``zx, zy``
    independently ``U(1 - z, 1 + z)`` with Keras' direction), same matrix about the image centre, bilinear
    interpolation, and every image transformed (``p=1``). Masks are warped with nearest-neighbour interpolation.

    Args:
        p: Probability of applying; Keras applies it to every image.
        **keras_args: ``rotation_range``, ``zoom_range``, ``width_shift_range``, ``height_shift_range``,
            ``fill_mode`` and ``cval`` as in :class:`~lightning_cnn.augmentation.ImageDataGeneratorArgs`. The flips
            are separate transforms (see :func:`keras_pipeline`).

    Raises:
        ValueError: On a negative range, a bad zoom range, an unknown ``fill_mode``, or a flip.
    """

    _targets = (A.core.type_definitions.Targets.IMAGE, A.core.type_definitions.Targets.MASK)

    def __init__(self, *, p: float = 1.0, **keras_args: Any) -> None:
        super().__init__(p=p)
        self.keras = ImageDataGeneratorArgs(**keras_args)
        if self.keras.horizontal_flip or self.keras.vertical_flip:
            raise ValueError(
                "KerasAffine does not flip; follow it with HorizontalFlip and VerticalFlip (p=0.5), "
                "as keras_pipeline does."
            )

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        draws = self.keras.params_from_uniform(self.random_generator.random(5), height, width)
        return {"matrix": keras_pixel_matrix(draws, height, width)}

    def _warp(self, img: np.ndarray, matrix: np.ndarray, interpolation: int) -> np.ndarray:
        height, width = img.shape[:2]
        out = cv2.warpAffine(
            img,
            matrix,
            (width, height),
            flags=interpolation | cv2.WARP_INVERSE_MAP,  # the matrix maps output to input, as Keras' does
            borderMode=_BORDER_MODES[self.keras.fill_mode],
            borderValue=(self.keras.cval,) * 4,
        )
        return out.reshape(img.shape)  # OpenCV drops a single channel axis

    def apply(self, img: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        return self._warp(img, matrix, cv2.INTER_LINEAR)  # Keras' interpolation_order=1

    def apply_to_mask(self, mask: np.ndarray, matrix: np.ndarray, **params: Any) -> np.ndarray:
        return self._warp(mask, matrix, cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return tuple(self.keras.as_kwargs(flips=False))

    def get_transform_init_args(self) -> dict[str, Any]:
        return self.keras.as_kwargs(flips=False)  # what ``A.to_dict`` writes and ``build_pipeline`` reads back


def keras_pipeline(*, seed: Optional[int] = None, random_erasing: float = 0.0, **keras_args: Any) -> A.Compose:
    """``ImageDataGenerator(...)``'s geometric arguments as an Albumentations pipeline (per sample, uint8 HWC).

    Keras' order: the affine part, then each flip with probability 0.5; then, if ``random_erasing`` > 0,
    Albumentations' ``Erasing`` (one black rectangle, with that probability).

    Args:
        seed: Seed of the pipeline's random draws (one stream shared by all transforms).
        random_erasing: Probability of one black rectangle per image (see
            :class:`~lightning_cnn.augmentation.KerasAugmentation`); 0: none.
        **keras_args: The arguments of :class:`~lightning_cnn.augmentation.ImageDataGeneratorArgs`.

    Raises:
        ValueError: On a bad range or an unknown ``fill_mode``.
    """
    keras = ImageDataGeneratorArgs(**keras_args)
    transforms: list[BasicTransform] = []
    if keras.rotation_range or keras.zoom_range or keras.width_shift_range or keras.height_shift_range:
        transforms.append(KerasAffine(**keras.as_kwargs(flips=False)))
    if keras.horizontal_flip:
        transforms.append(A.HorizontalFlip(p=0.5))
    if keras.vertical_flip:
        transforms.append(A.VerticalFlip(p=0.5))
    if check_probability(random_erasing, "random_erasing"):
        transforms.append(A.Erasing(scale=ERASING_SCALE, ratio=ERASING_RATIO, fill=0, p=random_erasing))
    return _seeded(A.Compose(transforms), seed)
