"""The in-memory dataset side: a parsed split (:class:`ImageArrays`), the dataset that serves it
(:class:`InMemoryImageDataset`) and the label check the readers run on it.

Images stay uint8 in memory; each batch is cut out of the array in one indexing operation and turned into
floats there (``__getitems__``), which keeps the loader far faster than the model on small images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cnn.augmentation import draw_seed
from lightning_cnn.data.errors import CorruptDataError
from lightning_cnn.preprocessing import normalize_uint8, resize_uint8

__all__ = ["ImageArrays", "InMemoryImageDataset", "check_label_range"]


def check_label_range(labels: np.ndarray, num_classes: Optional[int], path: Path) -> None:
    """Raise one line naming ``path`` and the first label outside ``0..num_classes-1`` (``None``: no check).

    Raises:
        CorruptDataError: If a label is out of range.
    """
    if num_classes is None or len(labels) == 0:
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise CorruptDataError(
            f"{path} holds label {int(bad[0])}, outside 0..{num_classes - 1} for this {num_classes}-class dataset "
            f"({len(bad)} such label(s)); fix the file or use the datamodule of the dataset it belongs to."
        )


class ImageArrays:
    """A split as arrays: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.astype(np.int64)


def _collate_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    # The dataset already returns a whole batch from __getitems__; nothing to stack.
    return batch


class InMemoryImageDataset(Dataset):
    """Images held as one uint8 tensor; indexing a list of indices returns a ready float batch.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        mean: Per-channel mean in [0, 1] units, or ``None`` for plain scaling to [0, 1].
        std: Per-channel std, with ``mean``.
        to_rgb: Repeat a single channel three times.
        transform: Per-sample augmentation on an ``(H, W, C)`` uint8 array, called as Albumentations
            transforms are (``transform(image=array)["image"]``); it must keep uint8 and the image size. One that
            offers ``set_random_seed`` (Albumentations pipelines do) is reseeded for every batch from its ``seed``,
            the epoch and the batch's indices (:func:`~lightning_cnn.augmentation.draw_seed`), so a batch is
            augmented alike by any worker, with any number of workers, and after a resume.
        size: The images' size for the network, ``(H, W)``, when they are stored smaller. With a ``transform``
            each batch is resized here (before augmenting, on the model-size image); without one, batches come
            out at the stored size and the datamodule resizes them on the training device
            (:func:`~lightning_cnn.preprocessing.resize_normalized`), so memory holds the stored size only.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        to_rgb: bool = False,
        transform: Optional[Callable[..., dict[str, Any]]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        self.images = images
        self.size = tuple(size) if size is not None else tuple(images.shape[-2:])
        self.labels = labels
        self.to_rgb = to_rgb
        self.transform = transform
        channels = 3 if to_rgb else images.shape[1]
        self.mean = (
            None if mean is None else torch.tensor(mean, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1)
        )
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1)
        # In shared memory, so persistent DataLoader workers see the epoch the loader sets.
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """The epoch the augmentation draws are keyed by (the training loader sets it before each epoch)."""
        self.epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def _augment(self, images: Tensor, indices: list[int]) -> Tensor:
        if hasattr(self.transform, "set_random_seed"):
            seed = getattr(self.transform, "seed", None) or 0
            self.transform.set_random_seed(draw_seed(seed, int(self.epoch), *indices))
        arrays = images.permute(0, 2, 3, 1).numpy()
        out = [self.transform(image=np.ascontiguousarray(a))["image"] for a in arrays]
        stacked = torch.from_numpy(np.stack(out))
        if stacked.ndim == 3:  # single-channel transforms may drop the channel axis
            stacked = stacked.unsqueeze(-1)
        return stacked.permute(0, 3, 1, 2)

    def to_float(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> normalized float32, with the channel expansion."""
        return normalize_uint8(images, self.mean, self.std, self.to_rgb)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        images = self.images[index]
        if self.transform is not None:
            images = self._augment(resize_uint8(images, self.size), indices)
        return self.to_float(images), self.labels[index]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]
