"""New images to predict on, prepared exactly as the training images were.

What a user points at: a folder of image files (searched in sub-folders too), one image file, or a NumPy
``.npy`` array of uint8 images ``(N, H, W)`` or ``(N, H, W, C)``. The preprocessing (size, channels,
normalization) and the class names come from the checkpoint (see :mod:`lightning_cnn.preprocessing`), so the data
config of the training run is not needed.

Files that cannot be decoded are skipped and listed in one warning; an ``.npy`` file is read without pickle
support, since a file a user points at is untrusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_cnn.checkpoints import checkpoint_preprocessing
from lightning_cnn.data.dataset import InMemoryImageDataset, _collate_batch
from lightning_cnn.data.errors import CorruptDataError, DataNotFoundError
from lightning_cnn.preprocessing import IMAGE_EXTENSIONS, Preprocessing, list_image_files

__all__ = ["ImageFilesDataModule", "PredictionInputs", "load_inputs", "warn_unreadable"]

# Label of an image whose class is unknown (new data); the prediction files leave its `label` column empty.
UNKNOWN_LABEL = -1
# Unreadable files named in the warning before it says "... and N more".
_SKIPPED_SHOWN = 5


def warn_unreadable(skipped: Sequence[str]) -> None:
    """One warning (rank 0) naming the first few files that could not be read and counting the rest; none if
    ``skipped`` is empty."""
    if skipped:
        more = f" and {len(skipped) - _SKIPPED_SHOWN} more" if len(skipped) > _SKIPPED_SHOWN else ""
        rank_zero_warn(
            f"skipped {len(skipped)} file(s) that are not readable images: {', '.join(skipped[:_SKIPPED_SHOWN])}{more}"
        )


class PredictionInputs:
    """Images ready for the network's preprocessing: resized uint8 ``(N, C, H, W)``, one id per image (the file
    path, or the index in an array), and the files that could not be read."""

    def __init__(self, images: Tensor, ids: list[str], skipped: list[str]) -> None:
        self.images = images
        self.ids = ids
        self.skipped = skipped


def load_inputs(inputs: Union[str, Path, Sequence[Union[str, Path]]], preprocessing: Preprocessing) -> PredictionInputs:
    """Read ``inputs`` — a folder, an image file, an ``.npy`` array, or a list of image files — and resize them to
    ``preprocessing``'s size and channels.

    Raises:
        DataNotFoundError: If a path does not exist, or a folder holds no image files.
        CorruptDataError: If an ``.npy`` file cannot be read or holds something other than uint8 images.
    """
    if isinstance(inputs, (str, Path)):
        path = Path(inputs).expanduser()
        if path.suffix.lower() == ".npy":
            return _load_array(path, preprocessing)
        if path.is_dir():
            files = list_image_files(path)
            if not files:
                raise DataNotFoundError(
                    f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, in sub-folders too); point "
                    "--inputs at a folder of images, an image file or an .npy array."
                )
        else:
            files = [path]
    else:
        files = [Path(p).expanduser() for p in inputs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataNotFoundError(
            f"{missing[0]} does not exist; give a folder of images, an image file or an .npy array of uint8 images."
        )
    images, ids, skipped = [], [], []
    for file in files:
        try:
            images.append(preprocessing.read(file))
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError
            skipped.append(f"{file} ({type(err).__name__})")
            continue
        ids.append(str(file))
    warn_unreadable(skipped)
    if not images:
        raise CorruptDataError(f"none of the {len(files)} file(s) given could be read as an image.")
    return PredictionInputs(torch.stack(images), ids, skipped)


def _load_array(path: Path, preprocessing: Preprocessing) -> PredictionInputs:
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist; give an .npy file of uint8 images (N, H, W[, C]).")
    try:
        with open(path, "rb") as handle:
            if handle.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                raise CorruptDataError(
                    f"{path} is not an .npy file (it lacks NumPy's header); save uint8 images with "
                    "numpy.save(path, images), or point --inputs at image files."
                )
        array = np.load(path, allow_pickle=False)  # a pickled array could run code when loaded
    except (OSError, ValueError) as err:
        raise CorruptDataError(
            f"{path} is not a plain .npy array ({err}); save uint8 images with numpy.save(path, images)."
        ) from None
    if array.ndim >= 1 and len(array) == 0:
        raise CorruptDataError(f"{path} holds no images (shape {array.shape}); give an array of at least one image.")
    try:
        images = preprocessing.from_array(array)
    except ValueError as err:
        raise CorruptDataError(f"{path}: {err}") from None
    return PredictionInputs(images, [str(i) for i in range(len(images))], [])


_NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts (NumPy's format)


class ImageFilesDataModule(pl.LightningDataModule):
    """Prediction on new images with a trained model's preprocessing (``python cli.py predict --inputs ...``).

    Args:
        inputs: A folder of images (sub-folders included), one image file, or an ``.npy`` uint8 array
            ``(N, H, W[, C])``.
        checkpoint: Checkpoint whose recorded preprocessing and class names to apply.
        preprocessing: The preprocessing as a dict, instead of ``checkpoint``.
        batch_size: Images per batch.

    Raises:
        ValueError: Without ``checkpoint`` or ``preprocessing``.
    """

    def __init__(
        self,
        inputs: str,
        checkpoint: Optional[str] = None,
        preprocessing: Optional[dict[str, Any]] = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if preprocessing is None and checkpoint is None:
            raise ValueError("ImageFilesDataModule needs the checkpoint (or preprocessing) to prepare the images like.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive number of images per batch.")
        self.inputs = inputs
        self.batch_size = batch_size
        self._preprocessing = (
            Preprocessing.from_dict(preprocessing) if preprocessing else checkpoint_preprocessing(checkpoint)
        )
        self.predict_set: Optional[InMemoryImageDataset] = None
        #: One id per image, in input order: the file path, or the index in the array.
        self.sample_ids: list[str] = []

    # --- what the CLI links into the model ---------------------------------------------------------------------

    @property
    def preprocessing(self) -> Preprocessing:
        return self._preprocessing

    @property
    def num_classes(self) -> int:
        return len(self._preprocessing.class_names)

    @property
    def dims(self) -> tuple[int, int, int]:
        return self._preprocessing.input_shape

    @property
    def label_names(self) -> list[str]:
        return list(self._preprocessing.class_names)

    # --- data --------------------------------------------------------------------------------------------------

    def setup(self, stage: Optional[str] = None) -> None:
        if self.predict_set is not None:
            return
        loaded = load_inputs(self.inputs, self._preprocessing)
        self.sample_ids = loaded.ids
        labels = torch.full((len(loaded.ids),), UNKNOWN_LABEL, dtype=torch.long)
        mean, std = self._preprocessing.mean, self._preprocessing.std
        self.predict_set = InMemoryImageDataset(loaded.images, labels, mean, std, self._preprocessing.to_rgb)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(self.predict_set, batch_size=self.batch_size, shuffle=False, collate_fn=_collate_batch)
