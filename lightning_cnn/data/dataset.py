"""The dataset side: a parsed split (:class:`ImageArrays`), the two datasets that serve batches of it, and the
label check the readers run on it.

- :class:`InMemoryImageDataset`: images stay uint8 in memory; each batch is cut out of the array in one indexing
  operation and turned into floats there (``__getitems__``), which keeps the loader far faster than the model on
  small images.
- :class:`ImageFileDataset`: only the file paths are held; each batch is decoded and resized from its files when
  it is asked for (in the DataLoader workers), so memory does not grow with the dataset.

Both build a batch the same way after that (augmentation seeded by the batch, then normalization), so a folder
trains the same in memory or streamed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from lightning_cnn.augmentation import draw_seed
from lightning_cnn.data.errors import CorruptDataError
from lightning_cnn.preprocessing import normalize_uint8, read_image, resize_uint8

__all__ = [
    "ImageArrays",
    "ImageFileDataset",
    "InMemoryImageDataset",
    "augment_uint8",
    "channel_stats",
    "check_label_range",
    "decode_or_skip",
    "decode_or_warn",
    "decode_resized",
]


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


def decode_resized(path: Union[str, Path, BinaryIO], grayscale: bool, size: tuple[int, int]) -> Tensor:
    """One image file decoded (:func:`~lightning_cnn.preprocessing.read_image`) and resized to ``size``: uint8
    ``(C, H, W)``, as a folder's images are prepared whether they are held in memory or streamed.

    Raises:
        OSError: If the file cannot be decoded.
    """
    array = read_image(path, grayscale=grayscale)
    return resize_uint8(torch.from_numpy(array).permute(2, 0, 1)[None], size)[0]


def augment_uint8(
    transform: Callable[..., dict[str, Any]], images: Tensor, epoch: int, indices: Sequence[int]
) -> Tensor:
    """A per-sample augmentation applied to each uint8 ``(C, H, W)`` image of ``images`` (``(N, C, H, W)``).

    A transform that offers ``set_random_seed`` (Albumentations pipelines do) is first reseeded from its ``seed``,
    the epoch and the samples' indices (:func:`~lightning_cnn.augmentation.draw_seed`), so the same samples get the
    same draws in any worker process, with any number of workers, and after a resume.
    """
    if hasattr(transform, "set_random_seed"):
        seed = getattr(transform, "seed", None) or 0
        transform.set_random_seed(draw_seed(seed, epoch, *indices))
    arrays = images.permute(0, 2, 3, 1).numpy()
    out = [transform(image=np.ascontiguousarray(a))["image"] for a in arrays]
    stacked = torch.from_numpy(np.stack(out))
    if stacked.ndim == 3:  # single-channel transforms may drop the channel axis
        stacked = stacked.unsqueeze(-1)
    return stacked.permute(0, 3, 1, 2)


def channel_stats(values: Optional[Sequence[float]], channels: int) -> Optional[Tensor]:
    """Per-channel mean or std as float32 ``(1, channels, 1, 1)`` (one value is repeated), or ``None``."""
    if values is None:
        return None
    return torch.tensor(values, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1)


def decode_or_skip(
    source: Union[str, Path, BinaryIO], name: str, grayscale: bool, size: tuple[int, int], skipped: list[str]
) -> Optional[Tensor]:
    """:func:`decode_resized`, or ``None`` when the image cannot be decoded, with ``"name (why)"`` added to
    ``skipped``: one damaged file costs its sample, never the run. The in-memory, streamed and shard datasets all
    decode through here; what they do with ``skipped`` differs only in when they can say it (see
    :func:`decode_or_warn`)."""
    try:
        return decode_resized(source, grayscale, size)
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        # PIL's own words, except where they would name the source again (a path, or a bytes buffer's repr).
        why = "not an image" if isinstance(err, UnidentifiedImageError) else str(err) or type(err).__name__
        skipped.append(f"{name} ({why})")
        return None


def decode_or_warn(
    source: Union[str, Path, BinaryIO], name: str, grayscale: bool, size: tuple[int, int], reported: set[str]
) -> Optional[Tensor]:
    """:func:`decode_or_skip` for data read while training (streamed files, shards): the file is named in a warning
    when a batch meets it, once per name in ``reported``, since no list of all the damaged files exists before."""
    skipped: list[str] = []
    image = decode_or_skip(source, name, grayscale, size, skipped)
    if skipped and name not in reported:
        reported.add(name)
        warnings.warn(f"{skipped[0]}: cannot be read as an image; skipped: fix or remove it.", stacklevel=3)
    return image


class _ImageBatches(Dataset):
    """What both datasets share: the labels, the normalization, the per-sample augmentation seeded by the batch,
    and ``__getitems__``, which turns the uint8 images a subclass loads (``_load``) into a ready float batch."""

    #: Whether ``_load`` decodes files (work for DataLoader workers) rather than slicing memory.
    decodes_files: bool = False

    def __init__(
        self,
        labels: Tensor,
        channels: int,
        mean: Optional[Sequence[float]],
        std: Optional[Sequence[float]],
        to_rgb: bool,
        transform: Optional[Callable[..., dict[str, Any]]],
        size: tuple[int, int],
    ) -> None:
        self.labels = labels
        self.size = tuple(size)
        self.to_rgb = to_rgb
        self.transform = transform
        channels = 3 if to_rgb else channels
        self.mean, self.std = channel_stats(mean, channels), channel_stats(std, channels)
        # In shared memory, so persistent DataLoader workers see the epoch the loader sets.
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """The epoch the augmentation draws are keyed by (the training loader sets it before each epoch)."""
        self.epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """The uint8 ``(n, C, H, W)`` images at ``indices`` and their labels (fewer than ``len(indices)`` when some
        cannot be read)."""
        raise NotImplementedError

    def to_float(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> normalized float32, with the channel expansion."""
        return normalize_uint8(images, self.mean, self.std, self.to_rgb)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        images, labels = self._load(indices)
        if self.transform is not None and len(images):
            images = augment_uint8(self.transform, resize_uint8(images, self.size), int(self.epoch), indices)
        return self.to_float(images), labels

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        if not len(y):
            raise IndexError(f"sample {index} cannot be read (see the warning naming its file)")
        return x[0], y[0]


class InMemoryImageDataset(_ImageBatches):
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
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        super().__init__(labels, images.shape[1], mean, std, to_rgb, transform, size)
        self.images = images

    def _load(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


class ImageFileDataset(_ImageBatches):
    """Images read from their files batch by batch: each file is decoded and resized to ``size`` when its batch is
    built, normally in a DataLoader worker, so memory holds the paths only.

    A file that cannot be decoded is left out of its batch (which is one image shorter) and named in a warning, once
    per process; the datamodule's scan at setup leaves out the files whose header does not read, so this is for
    damage only a full decode finds (a truncated JPEG).

    Args:
        paths: One image file per sample.
        labels: int64 ``(N,)``.
        size: ``(H, W)`` every image is resized to.
        grayscale: Decode as one channel (``L``) instead of RGB.

    ``mean``, ``std``, ``to_rgb`` and ``transform`` are as for :class:`InMemoryImageDataset`.
    """

    decodes_files = True

    def __init__(
        self,
        paths: Sequence[Union[str, Path]],
        labels: Tensor,
        size: tuple[int, int],
        grayscale: bool = False,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        to_rgb: bool = False,
        transform: Optional[Callable[..., dict[str, Any]]] = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        super().__init__(labels, 1 if grayscale else 3, mean, std, to_rgb, transform, size)
        self.paths = [str(p) for p in paths]
        self.grayscale = grayscale
        self._reported: set[str] = set()

    def _source(self, index: int) -> tuple[Union[str, BinaryIO], str]:
        """What to decode for sample ``index`` (a path or an open binary stream) and its name for a warning."""
        path = self.paths[index]
        return path, path

    def _load(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        images, kept = [], []
        for index in indices:
            image = decode_or_warn(*self._source(index), self.grayscale, self.size, self._reported)
            if image is not None:
                images.append(image)
                kept.append(index)
        labels = self.labels[torch.as_tensor(kept, dtype=torch.long)]
        if not images:
            channels = 1 if self.grayscale else 3
            return torch.zeros((0, channels, *self.size), dtype=torch.uint8), labels
        return torch.stack(images), labels
