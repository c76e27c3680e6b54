"""Your own images, one sub-folder per class: what a user brings to fine-tune a pretrained network on.

Two layouts are understood (class names are the sub-folder names, sorted; ``classes`` picks by that index)::

    data_dir/train/<class>/*.jpg        data_dir/<class>/*.jpg
    data_dir/val/<class>/*.jpg   (opt.)
    data_dir/test/<class>/*.jpg  (opt.)

Without a ``val`` folder the validation set is split off the training images (``val_split``); without a ``test``
folder the test split *is the validation split* (a warning says so), since a few images rarely spare a third set.

Images are decoded once, resized to ``image_size`` and kept in memory as uint8, like the other datamodules: memory
is ``N × H × W × C`` bytes (1,000 RGB images at 224×224 take 150 MB). For far larger folders use a streaming
``torchvision.datasets.ImageFolder`` pipeline instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.data.base import ImageDataModule
from lightning_cnn.data.dataset import ImageArrays
from lightning_cnn.data.errors import CorruptDataError, DataNotFoundError
from lightning_cnn.preprocessing import IMAGE_EXTENSIONS, list_image_files, read_image, resize_uint8
from lightning_cnn.registry import DATAMODULES

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataModule"]

_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _class_dirs(root: Path) -> list[Path]:
    # Not torchvision's find_classes: it takes hidden folders (.git, .ipynb_checkpoints) for classes.
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _classes_with_images(train_dir: Path) -> tuple[str, ...]:
    """The class folders that hold training images; empty ones are named in a warning and left out, so the network
    never gets an output for a class it cannot learn."""
    folders = _class_dirs(train_dir)
    empty = [d.name for d in folders if not list_image_files(d)]
    if empty:
        rank_zero_warn(
            f"{train_dir}: class folder(s) {empty} hold no images and are left out (no output for them); add "
            f"images ({', '.join(IMAGE_EXTENSIONS)}) to train those classes."
        )
    return tuple(d.name for d in folders if d.name not in empty)


@DATAMODULES.register("image_folder", image_size=32)
class ImageFolderDataModule(ImageDataModule):
    """Images in class sub-folders (``train``/``val``/``test`` folders, or class folders only, split by seed).

    Args:
        data_dir: The dataset's root folder (see the module docs for the layouts).
        image_size: Side (int) or ``(height, width)`` every image is resized to; required unless
            ``normalize_from_weights`` gives it.
        grayscale: Read images as one channel (``L``) instead of RGB.
        normalize: Standardize with ``mean``/``std`` 0.5 (to [-1, 1]); off: scale to [0, 1]. For a pretrained
            network use ``normalize_from_weights``.
        **kwargs: The other :class:`~lightning_cnn.data.base.ImageDataModule` options (``batch_size``,
            ``val_split``, ``classes``, ``normalize_from_weights``, ``num_workers``, ``train_transform``…).

    Raises:
        DataNotFoundError: If ``data_dir`` has no class folder with images.
        ValueError: Without an image size, or when ``val``/``test`` hold a class that ``train`` lacks.
    """

    name = "image folder"
    mean = (0.5,)
    std = (0.5,)

    def __init__(
        self,
        data_dir: str,
        image_size: Union[int, tuple[int, int], None] = None,
        grayscale: bool = False,
        batch_size: int = 32,
        val_split: Union[int, float] = 0.2,
        **kwargs: Any,
    ) -> None:
        # Known before the base class checks `classes` and before the CLI links num_classes into the model.
        self.root = Path(data_dir).expanduser()
        self.split_dirs = self._split_dirs(self.root)
        self.class_names = _classes_with_images(self.split_dirs["train"])
        self.channels = 1 if grayscale else 3
        if image_size is None and not kwargs.get("normalize_from_weights"):
            raise ValueError(
                f"image_size is not set for {self.root}; folder images differ in size, so give data.image_size "
                "(e.g. 224) or data.normalize_from_weights to use the pretrained weights' input size."
            )
        super().__init__(
            data_dir=data_dir,
            image_size=image_size,
            batch_size=batch_size,
            val_split=val_split,
            download=False,
            **kwargs,
        )
        self.grayscale = grayscale

    @staticmethod
    def _split_dirs(root: Path) -> dict[str, Optional[Path]]:
        if not root.is_dir():
            raise DataNotFoundError(f"image folder {root} does not exist; set data.data_dir to your dataset's folder.")
        found = {
            split: next((root / n for n in names if (root / n).is_dir()), None) for split, names in _SPLIT_DIRS.items()
        }
        if found["train"] is None:
            found["train"] = root  # class folders directly under the root
            found["val"] = found["test"] = None
        classes = _class_dirs(found["train"])
        if not classes or not any(list_image_files(d) for d in classes):
            raise DataNotFoundError(
                f"{found['train']} has no class sub-folders with images ({', '.join(IMAGE_EXTENSIONS)}); lay it out as "
                "<data_dir>/<class>/<image> or <data_dir>/train/<class>/<image>."
            )
        return found

    # --- ImageDataModule's interface -------------------------------------------------------------------------

    def _find(self, folder: Path) -> Optional[Path]:
        return self.root

    def _candidate_dirs(self) -> list[Path]:
        return [self.root]

    def _download(self, folder: Path) -> None:
        raise DataNotFoundError(f"{self.root} cannot be downloaded; it is your own image folder.")

    def _read_split(self, folder: Path) -> ImageArrays:
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = [d.name for d in _class_dirs(folder) if d.name not in index and list_image_files(d)]
        if unknown:
            raise ValueError(
                f"{folder} has classes {unknown} that {self.split_dirs['train']} lacks; every class needs training "
                "images (add them, or remove those folders)."
            )
        images, labels = [], []
        for class_dir in (d for d in _class_dirs(folder) if d.name in index):
            for path in list_image_files(class_dir):
                try:
                    array = read_image(path, grayscale=self.grayscale)
                except OSError as err:  # PIL's UnidentifiedImageError is an OSError
                    raise CorruptDataError(f"{path} cannot be read as an image ({err}); fix or remove it.") from None
                # The datasets' own resize (antialiased bilinear), which prediction on new files applies too.
                resized = resize_uint8(torch.from_numpy(array).permute(2, 0, 1)[None], self.image_size)
                images.append(resized[0].permute(1, 2, 0).numpy())
                labels.append(index[class_dir.name])
        if not images:
            return self._empty()
        return ImageArrays(np.stack(images), np.asarray(labels))

    def _empty(self) -> ImageArrays:
        return ImageArrays(np.zeros((0, *self.image_size, self.channels), np.uint8), np.zeros(0, np.int64))

    def _read(self, folder: Path) -> tuple[ImageArrays, ImageArrays]:
        test_dir = self.split_dirs["test"]
        # Without a test folder the test split is set in `setup` (to the validation split).
        test = self._read_split(test_dir) if test_dir is not None else self._empty()
        return self._read_split(self.split_dirs["train"]), test

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        val_dir = self.split_dirs["val"]
        if val_dir is not None:
            # A val folder is the validation set: no split of the training images.
            requested, self.val_split = self.val_split, 0
            try:
                super().setup(stage)
            finally:
                self.val_split = requested
            self.val_set = self._dataset(*self._prepare(self._read_split(val_dir)))
        else:
            super().setup(stage)
        if self.split_dirs["test"] is None:
            if self.val_set is None:
                raise ValueError(
                    f"{self.root} has no val/ or test/ folder and val_split is 0: nothing to evaluate on; set "
                    "data.val_split (e.g. 0.2) or add a test/ folder."
                )
            rank_zero_warn(f"{self.root} has no test/ folder: the test split is the validation split.")
            self.test_set = self.val_set
