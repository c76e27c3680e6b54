"""Your own images, one sub-folder per class: what a user brings to fine-tune a pretrained network on.

Two layouts are understood (class names are the sub-folder names, sorted; ``classes`` picks by that index)::

    data_dir/train/<class>/*.jpg        data_dir/<class>/*.jpg
    data_dir/val/<class>/*.jpg   (opt.)
    data_dir/test/<class>/*.jpg  (opt.)

Without a ``val`` folder the validation set is split off the training images (``val_split``); without a ``test``
folder the test split *is the validation split* (a warning says so), since a few images rarely spare a third set.

Two ways to serve the images (``in_memory``):

- **in memory** (``true``): decoded once, resized to ``image_size`` and kept as uint8, like the other datamodules —
  fastest, and memory is ``N × H × W × C`` bytes per process (1,000 RGB images at 224×224 take 150 MB; 100,000
  take 15 GB);
- **streamed** (``false``): only the file list is kept; DataLoader workers decode and resize each batch's files
  when it is needed, so memory does not grow with the folder. Same order, split, augmentation and resume as in
  memory.

``auto`` (the default) streams when the decoded images of all splits, times the processes on this machine, would
take more than ``memory_share`` of its RAM.

Files that cannot be read are left out and named in one warning, not an error: in memory when they are decoded at
setup; streamed, when their header does not read at setup (a scan, not a decode) or, for damage only a full decode
finds, in the batch that meets them (one warning per file and process). A class whose every file is unreadable
is an error, though: dropping it would report accuracy over the other classes only. A class folder with no image
files at all is not a class, and is left out with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.console import say
from lightning_cnn.data.base import ImageDataModule
from lightning_cnn.data.dataset import ImageArrays, ImageFileDataset, decode_or_skip
from lightning_cnn.data.errors import CorruptDataError, DataNotFoundError
from lightning_cnn.data.files import warn_unreadable
from lightning_cnn.preprocessing import IMAGE_EXTENSIONS, list_image_files
from lightning_cnn.registry import DATAMODULES

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataModule"]

_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
#: Share of this machine's RAM the decoded images may take (all splits, all processes on it) before ``in_memory:
#: auto`` streams them.
DEFAULT_MEMORY_SHARE = 0.25


def _header_error(path: Path) -> Optional[str]:
    """Why ``path``'s image header does not read (PIL opens lazily: no pixels are decoded), or ``None``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (the header is parsed by now)
    except (OSError, Image.DecompressionBombError) as err:
        return f"{path} ({type(err).__name__})"
    return None


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
        in_memory: ``true``: decode every image once at setup and keep it in memory; ``false``: stream, decoding
            each batch's files in the DataLoader workers; ``auto``: stream when the decoded images would take more
            than ``memory_share`` of RAM (see the module docs).
        memory_share: The share of this machine's RAM (0-1] that ``auto`` allows the decoded images of all splits
            and all processes on the machine.
        **kwargs: The other :class:`~lightning_cnn.data.base.ImageDataModule` options (``batch_size``,
            ``val_split``, ``classes``, ``normalize_from_weights``, ``num_workers``, ``train_transform``…).
            ``normalize`` standardizes with ``mean``/``std`` 0.5 here (to [-1, 1]); off, pixels are scaled to
            [0, 1]. For a pretrained network use ``normalize_from_weights``.

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
        in_memory: Union[bool, Literal["auto"]] = "auto",
        memory_share: float = DEFAULT_MEMORY_SHARE,
        **kwargs: Any,
    ) -> None:
        if in_memory not in (True, False, "auto"):
            raise ValueError(f"in_memory={in_memory!r}; choose true (decode once), false (stream) or auto.")
        if not 0 < memory_share <= 1:
            raise ValueError(f"memory_share={memory_share!r}; give the share of RAM as a fraction in (0, 1].")
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
        super().__init__(data_dir, image_size=image_size, batch_size=batch_size, val_split=val_split, download=False,
                         **kwargs)  # fmt: skip
        self.grayscale = grayscale
        self.in_memory = in_memory
        self.memory_share = memory_share
        #: Whether the images are streamed from their files (decided in ``setup`` when ``in_memory`` is auto).
        self.streaming: Optional[bool] = None

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

    def _list_split(self, folder: Path) -> tuple[list[Path], np.ndarray]:
        """The image files of ``folder``'s class folders and their labels (indices in ``class_names``).

        Raises:
            ValueError: If ``folder`` has a class with images that the training folder lacks.
        """
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = [d.name for d in _class_dirs(folder) if d.name not in index and list_image_files(d)]
        if unknown:
            raise ValueError(
                f"{folder} has classes {unknown} that {self.split_dirs['train']} lacks; every class needs training "
                "images (add them, or remove those folders)."
            )
        paths, labels = [], []
        for class_dir in (d for d in _class_dirs(folder) if d.name in index):
            files = list_image_files(class_dir)
            paths += files
            labels += [index[class_dir.name]] * len(files)
        return paths, np.asarray(labels, dtype=np.int64)

    def _read_split(self, folder: Path) -> ImageArrays:
        paths, labels = self._list_split(folder)
        # Filled in place: a list of images stacked at the end would briefly take twice the memory.
        images = np.empty((len(paths), *self.image_size, self.channels), dtype=np.uint8)
        kept: list[int] = []
        skipped: list[str] = []
        for i, path in enumerate(paths):
            image = decode_or_skip(path, str(path), self.grayscale, self.image_size, skipped)
            if image is not None:
                images[len(kept)] = image.permute(1, 2, 0).numpy()
                kept.append(i)
        warn_unreadable(skipped)  # decoded up front: every damaged file is known, and named in one warning
        if not kept:
            if paths:
                raise CorruptDataError(f"none of the {len(paths)} image files in {folder} can be read as an image.")
            return self._empty()
        self._refuse_unreadable_classes(folder, labels, labels[kept])
        return ImageArrays(images[: len(kept)], labels[kept])

    def _refuse_unreadable_classes(self, folder: Path, listed: np.ndarray, readable: np.ndarray) -> None:
        """A class whose files are all unreadable is damaged data, not a class to drop: training without it would
        report a test accuracy over the other classes only. (A class folder with no files at all is left out
        with a warning, see _classes_with_images.)

        Raises:
            CorruptDataError: Naming the class folder.
        """
        lost = sorted(set(listed.tolist()) - set(readable.tolist()))
        if lost:
            names = [self.class_names[i] for i in lost]
            raise CorruptDataError(
                f"{folder / names[0]}: none of its {int((listed == lost[0]).sum())} image files can be read "
                f"(classes without a readable image: {names}); replace or remove the damaged files, or remove "
                "the class folder."
            )

    def _file_split(self, folder: Path) -> tuple[list[Path], torch.Tensor]:
        """The streamed form of a split: its files whose header reads, after the ``classes`` subset, and labels."""
        paths, labels = self._list_split(folder)
        keep, labels = self._subset_classes(labels)
        paths = [p for p, k in zip(paths, keep) if k]
        errors = [_header_error(p) for p in paths]
        warn_unreadable([e for e in errors if e is not None])
        good = [i for i, e in enumerate(errors) if e is None]
        if paths and not good:
            raise CorruptDataError(f"none of the {len(paths)} image files in {folder} can be read as an image.")
        self._refuse_unreadable_classes(folder, labels, labels[good])
        return [paths[i] for i in good], torch.from_numpy(labels[good])

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
        self.streaming = self._should_stream()
        val_dir = self.split_dirs["val"]
        if self.streaming:
            self._setup_streaming()
        elif val_dir is not None:
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

    def _should_stream(self) -> bool:
        if self.in_memory != "auto":
            return not self.in_memory
        files = sum(len(list_image_files(d)) for d in self.split_dirs.values() if d is not None)
        processes = self.trainer.num_devices if self.trainer is not None else 1
        decoded = files * self.channels * self.image_size[0] * self.image_size[1] * processes
        allowed = self.memory_share * _ram_bytes()
        if decoded > allowed:
            say(
                f"{self.root}: {files} images at {self.image_size[0]}x{self.image_size[1]} would take "
                f"{decoded / 2**30:.1f} GiB in memory ({processes} process(es)), over memory_share {self.memory_share} "
                f"of RAM ({allowed / 2**30:.1f} GiB): streaming them from their files (data.in_memory: true to override)."
            )
            return True
        return False

    def _setup_streaming(self) -> None:
        mean, std = (self.mean, self.std) if self.normalize else (None, None)

        def dataset(paths: list[Path], labels: torch.Tensor, transform: Any = None) -> ImageFileDataset:
            return ImageFileDataset(paths, labels, self.image_size, self.grayscale, mean, std, self.to_rgb, transform)

        paths, labels = self._file_split(self.split_dirs["train"])
        val_dir = self.split_dirs["val"]
        train_idx, val_idx = self._split_indices(len(labels), val_split=0 if val_dir is not None else None)
        self.train_set = dataset([paths[i] for i in train_idx], labels[train_idx], self.train_transform)
        if self.augmentation is not None:
            self._build_augmentation(self.train_set)
        if val_dir is not None:
            self.val_set = dataset(*self._file_split(val_dir))
        else:
            self.val_set = dataset([paths[i] for i in val_idx], labels[val_idx]) if len(val_idx) else None
        test_dir = self.split_dirs["test"]
        self.test_set = dataset(*self._file_split(test_dir)) if test_dir is not None else None
