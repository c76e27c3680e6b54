"""Training-time augmentation: any Albumentations pipeline from YAML, and Keras' ImageDataGenerator in two forms.

All train-only (validation and test batches are only resized and normalized by the datamodule):

- :func:`build_pipeline` (``pipeline.py``): a hand-written list of Albumentations transforms from YAML, every name
  and argument checked.
- :class:`KerasAffine` and :func:`keras_pipeline` (``per_sample.py``): Keras' random transform per uint8 image,
  in the DataLoader workers.
- :class:`BatchedKerasAugment` (``batched.py``): the same on a whole float batch on the training device, for small
  images where per-sample work in a worker costs more than the model's step.

Both Keras forms share Keras' arguments (:class:`ImageDataGeneratorArgs`), draws and matrix (``keras.py``). The
YAML-facing choices for a datamodule's ``augmentation:`` are :class:`KerasAugmentation` and
:class:`AlbumentationsAugmentation` (``config.py``); seeding is in ``seeding.py``.
"""

import importlib
from typing import Any

from lightning_cnn.augmentation.batched import BatchedKerasAugment
from lightning_cnn.augmentation.config import AlbumentationsAugmentation, Augmentation, KerasAugmentation
from lightning_cnn.augmentation.keras import (
    SLIDES_IMAGE_DATA_GENERATOR,
    ImageDataGeneratorArgs,
    KerasParams,
    keras_pixel_matrix,
)
from lightning_cnn.augmentation.seeding import draw_seed, seed_worker

__all__ = [
    "SLIDES_IMAGE_DATA_GENERATOR",
    "AlbumentationsAugmentation",
    "Augmentation",
    "BatchedKerasAugment",
    "ImageDataGeneratorArgs",
    "KerasAffine",
    "KerasAugmentation",
    "KerasParams",
    "build_pipeline",
    "draw_seed",
    "keras_pipeline",
    "keras_pixel_matrix",
    "seed_worker",
]

# Albumentations and OpenCV take ~0.4 s to import and only the per-sample path needs them: these names load their
# module when first used.
_NEEDS_ALBUMENTATIONS = {"KerasAffine": "per_sample", "keras_pipeline": "per_sample", "build_pipeline": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _NEEDS_ALBUMENTATIONS:
        return getattr(importlib.import_module(f"{__name__}.{_NEEDS_ALBUMENTATIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
