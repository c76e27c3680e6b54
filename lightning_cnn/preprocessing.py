"""What an image goes through before the network sees it, recorded once so that training, prediction on new
images and exported models apply exactly the same steps.

A datamodule describes its preprocessing as a :class:`Preprocessing` (class names, input size, channels,
normalization); the CLI links it into :class:`~lightning_cnn.ImageClassifier`, whose hyperparameters — and so
every checkpoint — carry it as a plain dict. ``predict`` on new files, :func:`~lightning_cnn.predict.predict_images`
and :mod:`lightning_cnn.export` read it back from the checkpoint: no data config has to be repeated.

The steps, in order: decode with PIL (grayscale ``L`` or ``RGB``), resize to ``image_size`` (antialiased bilinear,
the same function the in-memory datamodules resize with), scale to [0, 1], repeat a single channel to three when
``to_rgb``, then subtract ``mean`` and divide by ``std`` when they are set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGE_EXTENSIONS",
    "Preprocessing",
    "list_image_files",
    "normalize_uint8",
    "read_image",
    "resize_normalized",
    "resize_uint8",
]

#: File suffixes read as images (case-insensitive): torchvision's ``ImageFolder`` list, plus GIF, which PIL reads.
IMAGE_EXTENSIONS = (*IMG_EXTENSIONS, ".gif")
# Images resized per chunk, to bound the float copy's memory on large datasets.
_RESIZE_CHUNK = 4096


def resize_uint8(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of a uint8 ``(N, C, H, W)`` tensor; returned unchanged at its size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        out[start : start + _RESIZE_CHUNK] = _resize_pixels(images[start : start + _RESIZE_CHUNK].float(), size)
    return out


def resize_normalized(
    x: Tensor, size: tuple[int, int], mean: Optional[Tensor] = None, std: Optional[Tensor] = None
) -> Tensor:
    """:func:`resize_uint8` for a batch :func:`normalize_uint8` already prepared, on its device: back to pixel
    values, the same resize and rounding, normalized again. Equal to resizing the uint8 images first (up to float
    rounding), so a datamodule can keep images at their stored size and resize each batch on the GPU."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mean is not None:
        mean, std = mean.to(x.device, x.dtype), std.to(x.device, x.dtype)
        x = x * std + mean
    pixels = _resize_pixels((x * 255.0).round_(), size)
    out = pixels.div_(255.0)
    return ((out - mean) / std).contiguous() if mean is not None else out


def _resize_pixels(pixels: Tensor, size: tuple[int, int]) -> Tensor:
    """Float pixel values 0-255 → the size, antialiased bilinear, rounded and clamped to whole values."""
    # Floats, rounded here: torchvision resizes uint8 with a fixed-point kernel on AVX2/ARM CPUs (up to 1 level off the
    # float result) but through floats on a GPU, so only a float resize gives the same pixels in memory and per batch.
    return TF.resize(pixels, list(size), antialias=True).round_().clamp_(0, 255)


def normalize_uint8(
    images: Tensor, mean: Optional[Tensor] = None, std: Optional[Tensor] = None, to_rgb: bool = False
) -> Tensor:
    """uint8 ``(N, C, H, W)`` → float32 in [0, 1], a single channel repeated to 3 if ``to_rgb``, then
    ``(x - mean) / std`` with ``mean``/``std`` shaped ``(1, C, 1, 1)`` (or ``None`` for plain scaling)."""
    x = images.float().div_(255.0)
    if to_rgb and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    if mean is not None:
        x.sub_(mean).div_(std)  # in place: one float copy of the batch, not three
    return x


def list_image_files(folder: Path) -> list[Path]:
    """The files under ``folder`` (sub-folders included) with an image suffix, sorted by path."""
    return sorted(f for f in folder.rglob("*") if f.is_file() and has_file_allowed_extension(f.name, IMAGE_EXTENSIONS))


def read_image(path: Union[str, Path, BinaryIO], grayscale: bool) -> np.ndarray:
    """Decode an image file as uint8 ``(H, W, C)`` with C = 1 (``L``) or 3 (``RGB``).

    PIL, not ``torchvision.io.decode_image``: that is deprecated since torchvision 0.29, reads no BMP or TIFF, and
    its grayscale mode weighs colours unlike PIL's ``L`` (which :meth:`Preprocessing.from_array` matches for arrays).

    Raises:
        OSError: If the file cannot be decoded (PIL's ``UnidentifiedImageError`` is one), or would decode to more
            pixels than PIL's decompression-bomb limit.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16"):
                # PIL's "L" conversion clips 16-bit gray at 255 (an almost white image); keep the high byte instead.
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
            array = np.array(image.convert("L" if grayscale else "RGB"), dtype=np.uint8)  # a writable copy for torch
    except Image.DecompressionBombError as err:  # not an OSError
        raise OSError(str(err)) from None
    return array[..., None] if array.ndim == 2 else array


@dataclass(frozen=True)
class Preprocessing:
    """The input a trained network expects, and how raw images are turned into it.

    Args:
        class_names: Name of each output class, in output order.
        image_size: ``(height, width)`` the images are resized to.
        channels: Channels images are read with: 1 (grayscale) or 3 (RGB).
        to_rgb: Repeat a single channel to three (networks pretrained on RGB).
        mean: Per-channel mean subtracted after scaling to [0, 1]; ``None``: no standardization.
        std: Per-channel standard deviation, with ``mean``.
    """

    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    to_rgb: bool = False
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}; images are read with 1 (grayscale) or 3 (RGB) channels.")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither.")

    @property
    def input_channels(self) -> int:
        """Channels of the network's input (3 when a grayscale image is repeated to RGB)."""
        return 3 if self.to_rgb else self.channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image as the network sees it."""
        return (self.input_channels, *self.image_size)

    # --- stored in checkpoints as plain types (weights_only-loadable) ---------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "channels": self.channels,
            "to_rgb": self.to_rgb,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Preprocessing:
        def floats(values: Optional[Sequence[float]]) -> Optional[tuple[float, ...]]:
            return None if values is None else tuple(float(v) for v in values)

        return cls(
            class_names=tuple(str(n) for n in record["class_names"]),
            image_size=tuple(int(s) for s in record["image_size"]),  # type: ignore[arg-type]
            channels=int(record["channels"]),
            to_rgb=bool(record.get("to_rgb", False)),
            mean=floats(record.get("mean")),
            std=floats(record.get("std")),
        )

    # --- applying it -------------------------------------------------------------------------------------------

    def statistics(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``mean`` and ``std`` as ``(1, C, 1, 1)`` tensors over the network's input channels (or ``None``)."""
        if self.mean is None:
            return None, None
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(self.input_channels).reshape(shape)
        std = torch.tensor(self.std, dtype=torch.float32).expand(self.input_channels).reshape(shape)
        return mean, std

    def read(self, path: Union[str, Path]) -> Tensor:
        """Decode and resize one image file: uint8 ``(C, H, W)`` (``OSError`` if it is not an image)."""
        array = read_image(path, grayscale=self.channels == 1)
        return self.from_array(array[None])[0]

    def from_array(self, images: np.ndarray) -> Tensor:
        """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` → resized uint8 ``(N, C, H, W)``; one channel is repeated to
        three for an RGB network, three are averaged to one (``L``'s weights) for a grayscale one.

        Raises:
            ValueError: On another dtype, rank or channel count.
        """
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"images of dtype {images.dtype} and shape {images.shape}; give uint8 (N, H, W) or (N, H, W, C)."
            )
        if images.ndim == 3:
            images = images[..., None]
        c = images.shape[-1]
        if c not in (1, 3, 4):
            hint = (
                "; it looks channels-first (N, C, H, W): numpy.moveaxis(images, 1, -1) makes it (N, H, W, C)"
                if images.ndim == 4 and images.shape[1] in (1, 3, 4)
                else ""
            )
            raise ValueError(
                f"images of shape {images.shape}: the last axis ({c}) is not 1, 3 or 4 channels; give (N, H, W) "
                f"or (N, H, W, C){hint}."
            )
        x = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2)
        if self.channels == 1 and x.shape[1] == 3:
            # PIL's "L" conversion in its own fixed-point form (ITU-R 601-2 luma, weights scaled by 2**16), so an
            # RGB array and the same picture as a file give the same gray levels.
            weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).reshape(1, 3, 1, 1)
            x = (((x.int() * weights).sum(dim=1, keepdim=True) + 32768) >> 16).to(torch.uint8)
        elif self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return resize_uint8(x.contiguous(), self.image_size)

    def to_input(self, images: Tensor) -> Tensor:
        """Resized uint8 ``(N, C, H, W)`` → the float batch the network takes."""
        mean, std = self.statistics()
        return normalize_uint8(images, mean, std, self.to_rgb)
