"""The shared DataModule for in-memory image datasets (MNIST, Fashion-MNIST, CIFAR-10/100).

Subclasses differ by data, not code: class-level tables (channels, size, mean/std, class names, where a system
copy may live) plus two methods, ``_find`` (locate the files) and ``_read`` (parse them into arrays). The
datasets it builds are in ``dataset.py``.

Where data comes from, in order:

1. ``data_dir``, when it holds the files;
2. a system copy (``system_dirs``; e.g. Debian's ``dataset-fashion-mnist`` package);
3. a download into ``data_dir`` (default ``./data``) in ``prepare_data`` — once per node, on local rank 0
   (Lightning's ``prepare_data_per_node``, kept on purpose: right when each node has its own ``data_dir``, and
   safe when nodes share one, since each download goes to a private folder renamed into place when complete).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_cnn.augmentation import Augmentation
from lightning_cnn.data.dataset import ImageArrays, InMemoryImageDataset
from lightning_cnn.data.errors import DataNotFoundError
from lightning_cnn.data.fetch import download_into
from lightning_cnn.data.sampling import ResumableDataLoader, ResumableShuffleSampler, loader_options
from lightning_cnn.data.splits import _check_classes, _check_split_size, split_indices
from lightning_cnn.preprocessing import Preprocessing, resize_normalized, resize_uint8

__all__ = ["ImageDataModule"]

DEFAULT_DATA_DIR = "data"


class ImageDataModule(pl.LightningDataModule):
    """Base DataModule: loading, class subsets, resizing, seeded splits and loaders for one image dataset.

    Args:
        data_dir: Folder with the dataset's files, or where to download them (default ``./data``).
        batch_size: Samples per batch *per process* (under DDP the global batch is ``batch_size × world size``).
            Ignored when ``global_batch_size`` is set.
        global_batch_size: Samples per optimizer step summed over all processes; each process loads
            ``global_batch_size / world_size``, so a config trains the same on 1 or N devices. ``None`` uses
            ``batch_size`` per process.
        num_workers: DataLoader worker processes; ``None`` picks 0 without a per-sample transform (batches are
            cut from memory faster than a worker could ship them) and up to 4 with one.
        val_split: Validation set taken from the training data: a fraction in (0, 1), a count (int ≥ 1), or 0
            for none.
        val_split_mode: ``"random"`` (seeded permutation, class-balanced in expectation; a fraction ``s`` of
            ``n`` samples validates ``round(s * n)``) or ``"last"`` (Keras' ``validation_split``: the samples after
            the first ``floor(n * (1 - s))`` of the training arrays, before any shuffling, exactly Keras' rows).
        train_size: Keep only this many (int) or this fraction (float) of the remaining training samples,
            seeded — for small-data experiments and quick runs.
        normalize: Standardize with the dataset's mean/std; otherwise only scale to [0, 1] (as the slides do).
        normalize_from_weights: Preprocess as pretrained torchvision weights expect, read from their own
            ``transforms()`` (e.g. ``"VGG16_Weights.IMAGENET1K_V1"``): their mean/std replace the dataset's (implies
            ``normalize``), their crop size is the default ``image_size``, and grayscale images are repeated to 3
            channels.
        image_size: Resize to this side (int) or ``(height, width)``; ``None`` keeps the native size.
        classes: Keep only these labels (original ids), relabelled 0..k-1 in the given order; two classes make
            a binary task.
        to_rgb: Repeat a single channel to 3 (for networks pretrained on RGB).
        seed: Seed of the split and the subsets; the same seed gives the same split on every process.
        download: Allow downloading when the files are missing.
        pin_memory: Pin host memory for faster copies to the GPU; ``None`` turns it on when CUDA is available.
        persistent_workers: Keep workers between epochs; ``None`` turns it on whenever there are workers.
        train_transform: Per-sample augmentation for the training split only (Albumentations-style callable on
            an ``(H, W, C)`` uint8 array, keeping size and dtype).
        augmentation: Training augmentation from YAML (train split only), e.g.
            :class:`~lightning_cnn.augmentation.KerasAugmentation` (the slides' ``ImageDataGenerator``;
            ``mode: per_sample`` in the DataLoader workers, or ``batched`` on the device after the transfer) or
            :class:`~lightning_cnn.augmentation.AlbumentationsAugmentation` (any pipeline). Not with
            ``train_transform``.

    Raises:
        ValueError: On a bad option value (the message names it and the fix).
        DataNotFoundError: In ``prepare_data``/``setup`` when the files are missing and cannot be downloaded.
    """

    #: Bytes up to which a split enlarged by ``image_size`` is held enlarged in memory (resized once, fastest on a
    #: CPU); a larger one stays at its stored size and each batch is enlarged on the training device.
    enlarge_in_memory_up_to: ClassVar[int] = 2**30
    #: Short dataset name used in messages and the download folder.
    name: ClassVar[str] = "images"
    channels: ClassVar[int] = 1
    native_size: ClassVar[tuple[int, int]] = (28, 28)
    mean: ClassVar[tuple[float, ...]] = (0.5,)
    std: ClassVar[tuple[float, ...]] = (0.5,)
    class_names: ClassVar[tuple[str, ...]] = ()
    #: Folders a system package may have installed the files in, tried after ``data_dir``.
    system_dirs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        data_dir: Optional[str] = None,
        batch_size: int = 128,
        num_workers: Optional[int] = None,
        val_split: Union[int, float] = 0.1,
        val_split_mode: Literal["random", "last"] = "random",
        train_size: Union[int, float, None] = None,
        normalize: bool = True,
        normalize_from_weights: Optional[str] = None,
        image_size: Union[int, tuple[int, int], None] = None,
        classes: Optional[list[int]] = None,
        to_rgb: bool = False,
        seed: int = 42,
        download: bool = True,
        pin_memory: Optional[bool] = None,
        persistent_workers: Optional[bool] = None,
        train_transform: Optional[Callable[..., dict[str, Any]]] = None,
        global_batch_size: Optional[int] = None,
        augmentation: Optional[Augmentation] = None,
    ) -> None:
        super().__init__()
        # Transform objects are not hyperparameters: saved in a checkpoint they would be pickled objects, which
        # `torch.load(weights_only=True)` refuses. (Under the CLI, config.yaml records them.)
        self.save_hyperparameters(ignore=["train_transform", "augmentation"])
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a positive number of samples per batch.")
        if global_batch_size is not None and global_batch_size < 1:
            raise ValueError(f"global_batch_size={global_batch_size}; use a positive number of samples per step.")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers={num_workers}; use 0 (load in the main process) or more.")
        _check_split_size(val_split, "val_split", allow_zero=True)
        if train_size is not None:
            _check_split_size(train_size, "train_size", allow_zero=False)
        if val_split_mode not in ("random", "last"):
            raise ValueError(f"val_split_mode={val_split_mode!r}; choose 'random' or 'last'.")
        self.classes = _check_classes(classes, len(self.class_names), type(self).__name__)
        self.image_size = _as_size(image_size) if image_size is not None else self.native_size
        self.normalize_from_weights = normalize_from_weights
        if normalize_from_weights:
            from lightning_cnn.models.backbones import weights_preprocessing  # imports torchvision only when used

            self.mean, self.std, weights_size = weights_preprocessing(normalize_from_weights)
            self.image_size = _as_size(image_size) if image_size is not None else weights_size
            normalize = True
            to_rgb = to_rgb or (self.channels == 1 and len(self.mean) == 3)

        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.val_split_mode = val_split_mode
        self.train_size = train_size
        self.normalize = normalize
        self.to_rgb = to_rgb
        self.seed = seed
        self.download = download
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_transform = train_transform
        self.global_batch_size = global_batch_size
        if augmentation is not None and train_transform is not None:
            raise ValueError("both train_transform and augmentation are set; give the augmentation in one of them.")
        self.augmentation = augmentation
        #: Applied to training batches on the device (``augmentation`` in ``batched`` mode), built in ``setup``.
        self.batch_augment: Optional[Callable[[Tensor], Tensor]] = None
        self._train_loader: Optional[DataLoader] = None

        self.train_set: Optional[InMemoryImageDataset] = None
        self.val_set: Optional[InMemoryImageDataset] = None
        self.test_set: Optional[InMemoryImageDataset] = None

    # --- what the CLI links into the model ---------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else len(self.class_names)

    @property
    def dims(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image as the model sees it."""
        return (3 if self.to_rgb else self.channels, *self.image_size)

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[c] for c in self.classes] if self.classes else list(self.class_names)

    @property
    def preprocessing(self) -> Preprocessing:
        """What every image goes through before the network (size, channels, normalization) and the class
        names: linked into the model, so checkpoints carry it for prediction and export."""
        return Preprocessing(
            class_names=tuple(self.label_names),
            image_size=tuple(self.image_size),
            channels=self.channels,
            to_rgb=self.to_rgb,
            mean=tuple(self.mean) if self.normalize else None,
            std=tuple(self.std) if self.normalize else None,
        )

    # --- subclass interface ------------------------------------------------------------------------------------

    def _find(self, folder: Path) -> Optional[Path]:
        """Return the folder that holds this dataset's files under ``folder``, or ``None``."""
        raise NotImplementedError

    def _read(self, folder: Path) -> tuple[ImageArrays, ImageArrays]:
        """Parse the files found by ``_find`` into (train, test) arrays."""
        raise NotImplementedError

    def _download(self, folder: Path) -> None:
        """Fetch the files into ``folder`` (called on one process per node)."""
        raise NotImplementedError

    def _layout(self) -> str:
        """The files ``_find`` looks for, for the message when they are missing."""
        return "its files"

    # --- locating and fetching ---------------------------------------------------------------------------------

    def _candidate_dirs(self) -> list[Path]:
        dirs = [Path(self.data_dir or DEFAULT_DATA_DIR).expanduser()]
        return dirs + [Path(d) for d in self.system_dirs]

    def locate(self) -> Optional[Path]:
        """The folder the data will be read from, or ``None`` if it still has to be downloaded."""
        for folder in self._candidate_dirs():
            if folder.is_dir():
                found = self._find(folder)
                if found is not None:
                    return found
        return None

    def _not_found(self, reason: str) -> DataNotFoundError:
        places = ", ".join(str(d) for d in self._candidate_dirs())
        return DataNotFoundError(
            f"{self.name} not found (looked in: {places} for {self._layout()}) and {reason}. Fix: set data.data_dir "
            f"to a folder holding the {self.name} files, or run once with network access and data.download: true"
            + (
                ", or use FashionMNISTDataModule, which reads Debian's dataset-fashion-mnist package offline."
                if self.name != "Fashion-MNIST"
                else ", or install Debian's dataset-fashion-mnist package."
            )
        )

    def prepare_data(self) -> None:
        if self.locate() is not None:
            return
        if not self.download:
            raise self._not_found("data.download is false")
        try:
            download_into(Path(self.data_dir or DEFAULT_DATA_DIR).expanduser(), self._download)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "no message"  # torchvision's span lines
            raise self._not_found(f"downloading it failed ({type(err).__name__}: {reason})") from err

    # --- building the splits -----------------------------------------------------------------------------------

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:  # setup may be called once per stage; the splits never change
            return
        folder = self.locate()
        if folder is None:
            raise self._not_found("prepare_data did not fetch it (data.download may be false)")
        train, test = self._read(folder)
        train_images, train_labels = self._prepare(train)
        test_images, test_labels = self._prepare(test)
        train_idx, val_idx = self._split_indices(len(train_labels))

        make = self._dataset
        self.train_set = make(train_images[train_idx], train_labels[train_idx], self.train_transform)
        if self.augmentation is not None:
            self._build_augmentation(self.train_set)
        self.val_set = make(train_images[val_idx], train_labels[val_idx]) if len(val_idx) else None
        self.test_set = make(test_images, test_labels)

    def _split_indices(self, n: int, val_split: Union[int, float, None] = None) -> tuple[Tensor, Tensor]:
        """Which of ``n`` training samples train and which validate (see :func:`split_indices`); ``val_split``
        overrides the datamodule's (0: all train, e.g. when a folder holds the validation set)."""
        val_split = self.val_split if val_split is None else val_split
        return split_indices(n, val_split, self.val_split_mode, self.train_size, self.seed)

    def _subset_classes(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The samples of the ``classes`` kept (a boolean mask) and their labels renumbered ``0..k-1`` in the order
        ``classes`` gives; without ``classes``, all samples and their labels."""
        if not self.classes:
            return np.ones(len(labels), dtype=bool), labels
        keep = np.isin(labels, self.classes)
        remap = np.full(len(self.class_names), -1, dtype=np.int64)
        remap[self.classes] = np.arange(len(self.classes))
        return keep, remap[labels[keep]]

    def _prepare(self, split: ImageArrays) -> tuple[Tensor, Tensor]:
        """Class subset and relabelling, then a resize when it shrinks the images; returns uint8 ``(N, C, H, W)``
        and int64 labels."""
        keep, labels = self._subset_classes(split.labels)
        images = split.images[keep] if self.classes else split.images
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        height, width = x.shape[-2:]
        enlarged_bytes = x.shape[0] * x.shape[1] * self.image_size[0] * self.image_size[1]
        if self.image_size[0] * self.image_size[1] > height * width and enlarged_bytes > self.enlarge_in_memory_up_to:
            return x, torch.from_numpy(labels)  # enlarged per batch, on the device: memory stays the stored size
        return resize_uint8(x, self.image_size), torch.from_numpy(labels)

    def _dataset(self, images: Tensor, labels: Tensor, transform: Optional[Callable] = None) -> InMemoryImageDataset:
        mean, std = (self.mean, self.std) if self.normalize else (None, None)
        return InMemoryImageDataset(images, labels, mean, std, self.to_rgb, transform, size=self.image_size)

    def _build_augmentation(self, train_set: InMemoryImageDataset) -> None:
        seed = self.augmentation.resolve_seed(self.trainer.global_rank if self.trainer is not None else 0)
        train_set.transform = self.augmentation.per_sample_transform(seed)
        self.batch_augment = self.augmentation.batch_transform(seed, train_set.mean, train_set.std)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Image batches are (images, labels); anything else Lightning moves to the device (e.g. the model
        # summary's example input, a bare tensor) passes as it is.
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            return batch
        images, labels = batch
        if tuple(images.shape[-2:]) != tuple(self.image_size):  # stored smaller: enlarged here, on the device
            dataset = next(d for d in (self.train_set, self.val_set, self.test_set) if d is not None)
            images = resize_normalized(images, self.image_size, dataset.mean, dataset.std)
            batch = (images, labels)
        # Augmentation: training batches only (not validation, test, prediction or the sanity check).
        if self.batch_augment is not None and self.trainer is not None and self.trainer.training:
            position = self._train_position()
            if position is not None and hasattr(self.batch_augment, "reseed"):
                # Draws keyed by the batch, not a stream through the epoch: the same after a resume.
                self.batch_augment.reseed(*position)
            return self.batch_augment(images), labels
        return batch

    def _train_position(self) -> Optional[tuple[int, int]]:
        """``(epoch, batches handed out this epoch)`` of the training loader, which key the batched augmentation's
        draws; ``None`` when the loader does not say."""
        loader = self._train_loader
        if isinstance(loader, ResumableDataLoader):
            return loader.sampler.epoch, loader.batches_handed_out
        return None

    # --- loaders -----------------------------------------------------------------------------------------------

    def _loader(self, dataset: Optional[InMemoryImageDataset], shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        common = loader_options(dataset, self.num_workers, self.persistent_workers, self.pin_memory)
        world_size, rank = _world(self)
        batch_size = self.per_process_batch_size(world_size)
        if shuffle:  # the training order: seeded, sharded over processes, resumable mid-epoch
            sampler = ResumableShuffleSampler(dataset, num_replicas=world_size, rank=rank, seed=self.seed)
            # Lightning's limit_train_batches shortens the epoch; the loader must know where the epoch ends.
            limit = self.trainer.limit_train_batches if self.trainer is not None else 1.0
            return ResumableDataLoader(dataset, sampler=sampler, batch_size=batch_size, limit_batches=limit, **common)
        # Evaluation under DDP: each image on exactly one process, none repeated to even out the shares (as
        # DistributedSampler would), so metrics and confusion matrices count every image once.
        sampler = UnrepeatedDistributedSampler(dataset, world_size, rank, shuffle=False) if world_size > 1 else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, **common)

    def per_process_batch_size(self, world_size: int) -> int:
        """Each process' batch: ``global_batch_size / world_size`` when a global size is set, else ``batch_size``.

        Raises:
            ValueError: If ``global_batch_size`` is not a multiple of ``world_size``.
        """
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} does not split over {world_size} processes; use a "
                f"multiple of {world_size} (devices × nodes), or set data.batch_size (per process) instead."
            )
        return self.global_batch_size // world_size

    def train_dataloader(self) -> DataLoader:
        self._train_loader = self._loader(self.train_set, shuffle=True)
        return self._train_loader

    def val_dataloader(self) -> Union[DataLoader, list]:
        if self.train_set is not None and self.val_set is None:
            return []  # val_split is 0: an empty list tells Lightning to skip validation
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def _world(datamodule: pl.LightningDataModule) -> tuple[int, int]:
    """``(world_size, global_rank)`` of the attached trainer; ``(1, 0)`` when used without one."""
    trainer = datamodule.trainer
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def _as_size(size: Union[int, Sequence[int]]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size={size!r}; use a positive int or [height, width].")
    return hw  # type: ignore[return-value]
