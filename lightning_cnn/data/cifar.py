"""CIFAR-10 and CIFAR-100 from their "python version" archives: pickled dicts of 3072-byte rows.

Each batch file is a pickle (protocol 2, byte-string keys) with ``b"data"`` (uint8, N×3072: 1024 red, then green,
then blue values, row-major 32×32) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). A pickle can
name any Python callable to run while it is loaded, so batches are read with an unpickler that admits only what
real CIFAR files hold (dicts, lists, bytes, strings, numbers and numpy arrays) and refuses anything else.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from lightning_cnn.data.base import ImageDataModule
from lightning_cnn.data.dataset import ImageArrays, check_label_range
from lightning_cnn.data.errors import CorruptDataError
from lightning_cnn.registry import DATAMODULES

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "read_cifar_batch", "write_cifar_batch"]

_ROW = 3 * 32 * 32
# The only callables a CIFAR batch pickle names: numpy's array reconstruction, and the bytes codec protocol 2 uses
# for byte strings. Everything else a pickle could name (os.system, builtins.eval, ...) is refused.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CIFARUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never contains")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: str, num_classes: Optional[int] = None) -> ImageArrays:
    """Read one pickled CIFAR batch into ``(N, 32, 32, 3)`` images and labels.

    Raises:
        CorruptDataError: If the file is missing keys, truncated or not a CIFAR pickle.
    """
    fix = f"delete {path.parent} and download it again (or point data.data_dir at an intact copy)"
    try:
        with open(path, "rb") as f:
            batch = _CIFARUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise CorruptDataError(f"{path} is refused: {err} (not loaded, as it could run code); {fix}.") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise CorruptDataError(
            f"{path} cannot be read as a CIFAR batch ({type(err).__name__}: {err}); {fix}."
        ) from None
    key = label_key.encode()
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise CorruptDataError(f"{path} lacks b'data' or {key!r} (found {found}); {fix}.")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != _ROW or len(data) != len(labels):
        raise CorruptDataError(f"{path} holds data {data.shape} and {len(labels)} labels, expected (N, {_ROW}); {fix}.")
    check_label_range(labels, num_classes, path)
    return ImageArrays(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str) -> None:
    """Write ``(N, 32, 32, 3)`` uint8 images as a CIFAR batch pickle; the inverse of :func:`read_cifar_batch`."""
    data = np.ascontiguousarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), _ROW)
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key.encode(): [int(v) for v in labels]}, f, protocol=2)


_CIFAR100_NAMES = """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
"""


@DATAMODULES.register("cifar10", download=False)
class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: 50,000 train + 10,000 test 32×32 RGB images in 10 classes.

    Reads ``cifar-10-batches-py/`` under ``data_dir``; downloads it with torchvision when missing. Options: see
    :class:`~lightning_cnn.data.base.ImageDataModule`.
    """

    name = "CIFAR-10"
    channels = 3
    native_size = (32, 32)
    mean = (0.4914, 0.4822, 0.4465)  # train split
    std = (0.2470, 0.2435, 0.2616)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    _folder: ClassVar[str] = "cifar-10-batches-py"
    _train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    _test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    _label_key: ClassVar[str] = "labels"
    _torchvision_name: ClassVar[str] = "CIFAR10"

    def _find(self, folder: Path) -> Optional[Path]:
        for candidate in (folder / self._folder, folder):
            if all((candidate / f).exists() for f in self._train_files + self._test_files):
                return candidate
        return None

    def _layout(self) -> str:
        return f"{self._folder}/{{{','.join(self._train_files + self._test_files)}}}"

    def _read(self, folder: Path) -> tuple[ImageArrays, ImageArrays]:
        def read(files: tuple[str, ...]) -> ImageArrays:
            parts = [read_cifar_batch(folder / f, self._label_key, len(self.class_names)) for f in files]
            return ImageArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))

        return read(self._train_files), read(self._test_files)

    def _download(self, folder: Path) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, self._torchvision_name)(str(folder), train=True, download=True)


@DATAMODULES.register("cifar100", download=False)
class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: CIFAR-10's format with 100 fine-grained classes (``fine_labels``). Options: see
    :class:`~lightning_cnn.data.base.ImageDataModule`.
    """

    name = "CIFAR-100"
    mean = (0.5071, 0.4865, 0.4409)  # train split
    std = (0.2673, 0.2564, 0.2762)
    # The archive's ``meta`` file lists these fine label names in this (alphabetical) order.
    class_names = tuple(_CIFAR100_NAMES.split())
    _folder = "cifar-100-python"
    _train_files = ("train",)
    _test_files = ("test",)
    _label_key = "fine_labels"
    _torchvision_name = "CIFAR100"
