"""What a datamodule's ``augmentation:`` takes: the classes that YAML ``class_path`` names.

:class:`KerasAugmentation` is the slides' ``ImageDataGenerator`` (``mode: per_sample`` or ``batched``);
:class:`AlbumentationsAugmentation` is any pipeline, per sample. Both are train-only: validation and test batches
are only resized and normalized by the datamodule.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import torch
from torch import Tensor

from lightning_cnn.augmentation.batched import BatchedKerasAugment, check_probability
from lightning_cnn.augmentation.keras import ImageDataGeneratorArgs

# per_sample and pipeline are imported where a per-sample pipeline is built: they load Albumentations and OpenCV
# (~0.4 s), which a batched run never needs.
if TYPE_CHECKING:
    from lightning_cnn.augmentation.pipeline import _CheckedPipeline

__all__ = ["AlbumentationsAugmentation", "Augmentation", "KerasAugmentation"]


class Augmentation:
    """Base of the datamodules' ``augmentation:`` option: a per-sample pipeline and/or a batched transform.

    Args:
        seed: Seed of the augmentation draws; ``None`` derives one from torch's global generator (set by
            ``seed_everything``). Each batch's draws are keyed by this seed, the epoch and the batch (see
            :func:`~lightning_cnn.augmentation.draw_seed`).
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


@dataclasses.dataclass(frozen=True)
class KerasAugmentation(ImageDataGeneratorArgs, Augmentation):
    """The slides' ``ImageDataGenerator(...)`` augmentation, per sample or on whole batches.

    A dataclass extending :class:`~lightning_cnn.augmentation.ImageDataGeneratorArgs` (its arguments and their
    documentation), so that the YAML keys stay flat under ``init_args`` (``rotation_range: 20``) while the Keras
    arguments are listed in one place.

    Args:
        mode: ``"per_sample"``: Albumentations (:class:`~lightning_cnn.augmentation.KerasAffine` + flips) on each
            uint8 image in the DataLoader workers; ``"batched"``: :class:`BatchedKerasAugment` on each float batch
            on the training device, after the transfer — much faster for small images and small networks, but
            without ``fill_mode: wrap``.
        random_erasing: Not an ``ImageDataGenerator`` argument: after the Keras transform, the probability that
            an image gets one black rectangle covering 2–33% of it, height/width ratio 0.3–3.3 (random erasing,
            Zhong et al. 2017; ``Erasing`` in Albumentations per sample, the same ranges on the batch). 0: off.
        seed: See :class:`Augmentation`.

    Raises:
        ValueError: On a bad range, an unknown ``fill_mode``/``mode``, ``wrap`` with ``batched``, or a
            ``random_erasing`` outside [0, 1].
    """

    mode: Literal["per_sample", "batched"] = "per_sample"
    random_erasing: float = 0.0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if self.mode not in ("per_sample", "batched"):
            raise ValueError(
                f"mode={self.mode!r}; choose 'per_sample' (DataLoader workers) or 'batched' (on the device)."
            )
        super().__post_init__()
        check_probability(self.random_erasing, "random_erasing")
        if self.mode == "batched":  # grid sampling cannot wrap: fail when the config is read, not at the first batch
            BatchedKerasAugment(**self.as_kwargs(), random_erasing=self.random_erasing, seed=0)

    def per_sample_transform(self, seed: int) -> Optional[_CheckedPipeline]:
        if self.mode != "per_sample":
            return None
        from lightning_cnn.augmentation.per_sample import keras_pipeline
        from lightning_cnn.augmentation.pipeline import _CheckedPipeline

        return _CheckedPipeline(keras_pipeline(**self.as_kwargs(), random_erasing=self.random_erasing, seed=seed))

    def batch_transform(
        self, seed: int, mean: Optional[Tensor] = None, std: Optional[Tensor] = None
    ) -> Optional[BatchedKerasAugment]:
        if self.mode != "batched":
            return None
        return BatchedKerasAugment(
            **self.as_kwargs(), random_erasing=self.random_erasing, seed=seed, mean=mean, std=std
        )


class AlbumentationsAugmentation(Augmentation):
    """Any Albumentations pipeline, written in YAML (format: see :func:`~lightning_cnn.augmentation.build_pipeline`),
    applied per sample.

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
        from lightning_cnn.augmentation.pipeline import build_pipeline

        super().__init__(seed)
        self.transforms = transforms
        build_pipeline(transforms)  # fail when the config is read

    def per_sample_transform(self, seed: int) -> Optional[_CheckedPipeline]:
        from lightning_cnn.augmentation.pipeline import _CheckedPipeline, build_pipeline

        return _CheckedPipeline(build_pipeline(self.transforms, seed=seed))
