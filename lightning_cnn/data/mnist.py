"""MNIST and Fashion-MNIST: the same IDX file format, different tables.

The IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header — two zero bytes, a type code (0x08 for
unsigned bytes), the number of dimensions — then one uint32 per dimension, then the data. Files may be gzipped.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from lightning_cnn.data.base import ImageDataModule
from lightning_cnn.data.dataset import ImageArrays, check_label_range
from lightning_cnn.data.errors import CorruptDataError
from lightning_cnn.registry import DATAMODULES

__all__ = ["FashionMNISTDataModule", "MNISTDataModule", "read_idx", "write_idx"]

_IDX_UBYTE = 0x08
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally ``.gz``) into an array of its declared shape.

    Raises:
        CorruptDataError: If the file is truncated, not IDX, or not unsigned bytes; the message names the file
            and says to delete it and fetch it again.
    """
    fix = f"delete {path} and download it again (or point data.data_dir at an intact copy)"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise CorruptDataError(f"{path} cannot be read ({err}); {fix}.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CorruptDataError(f"{path} is not an IDX file (bad magic number); {fix}.")
    if raw[2] != _IDX_UBYTE:
        raise CorruptDataError(f"{path} holds IDX type 0x{raw[2]:02x}, expected unsigned bytes (0x08); {fix}.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDataError(f"{path} is truncated inside its header; {fix}.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise CorruptDataError(
            f"{path} declares shape {shape} ({expected} bytes) but holds {len(raw) - header} data bytes; {fix}."
        )
    # A copy: frombuffer views the read-only bytes, and torch cannot wrap read-only arrays.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``); the inverse of :func:`read_idx`."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@DATAMODULES.register("mnist", download=False)
class MNISTDataModule(ImageDataModule):
    """MNIST handwritten digits, 60,000 train + 10,000 test 28×28 grayscale images.

    Reads the four IDX files (plain or ``.gz``) from ``data_dir``, ``data_dir/raw`` or torchvision's layout
    ``data_dir/MNIST/raw``; downloads them with torchvision when missing. Options: see
    :class:`~lightning_cnn.data.base.ImageDataModule`.
    """

    name = "MNIST"
    channels = 1
    native_size = (28, 28)
    mean = (0.1307,)  # train split
    std = (0.3081,)
    class_names = tuple(str(d) for d in range(10))
    #: torchvision dataset class that knows the download mirrors.
    _torchvision_name: ClassVar[str] = "MNIST"

    def _find(self, folder: Path) -> Optional[Path]:
        for candidate in (folder, folder / "raw", folder / self._torchvision_name / "raw"):
            if all(_existing(candidate / f).exists() for f in _FILES.values()):
                return candidate
        return None

    def _layout(self) -> str:
        names = ", ".join(f"{name}[.gz]" for name in _FILES.values())
        return f"{names}, directly or under raw/ or {self._torchvision_name}/raw/"

    def _read(self, folder: Path) -> tuple[ImageArrays, ImageArrays]:
        paths = {key: _existing(folder / name) for key, name in _FILES.items()}
        arrays = {key: read_idx(path) for key, path in paths.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise CorruptDataError(
                    f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match; "
                    "delete the files and download them again."
                )
            check_label_range(labels, len(self.class_names), paths[f"{split}_labels"])
        return (
            ImageArrays(arrays["train_images"][..., None], arrays["train_labels"]),
            ImageArrays(arrays["test_images"][..., None], arrays["test_labels"]),
        )

    def _download(self, folder: Path) -> None:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self._torchvision_name)
        for train in (True, False):
            dataset_class(str(folder), train=train, download=True)


@DATAMODULES.register("fashion_mnist", download=False)
class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Zalando): MNIST's format and sizes, ten kinds of clothing.

    Besides ``data_dir``, it finds the copy Debian's ``dataset-fashion-mnist`` package installs, so it works
    offline. Options: see :class:`~lightning_cnn.data.base.ImageDataModule`.
    """

    name = "Fashion-MNIST"
    mean = (0.2860,)  # train split
    std = (0.3530,)
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    _torchvision_name = "FashionMNIST"


def _existing(path: Path) -> Path:
    """``path`` if present, else its ``.gz`` sibling (which may not exist either)."""
    return path if path.exists() else path.with_name(path.name + ".gz")
