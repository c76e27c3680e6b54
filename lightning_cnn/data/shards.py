"""Datasets written once as LitData shards and streamed back: for data larger than memory and for clusters.

Two halves (LitData is an optional extra: ``pip install -e ".[stream]"``):

- :func:`write_shards` (``python cli.py optimize --data … --output_dir …``) takes the splits a datamodule builds
  (its seeded train/validation split, class subset, and test split) and writes each with ``litdata.optimize`` into
  ``output_dir/<split>/`` as uncompressed chunks of ``chunk_bytes``, plus ``lightning_cnn.json`` beside them
  (class names, channels, stored size, mean/std, sample counts). An image folder's samples keep their files'
  encoded bytes (a JPEG stays a JPEG, so the shards take about the folder's size); the built-in datasets' samples
  are their uint8 arrays.
- :class:`ShardedDataModule` (``data: class_path: lightning_cnn.data.ShardedDataModule``) trains from them: the
  training split through LitData's ``StreamingDataset`` / ``StreamingDataLoader`` — read from a local folder or
  object storage (``s3://…``), shuffled by chunks with ``seed``, split between nodes, ranks and loader workers, its
  position saved in every checkpoint so a resumed run continues the epoch; the validation and test splits by
  index, each image on exactly one process, as the other datamodules evaluate.

Shards are files a user points us at, so they are untrusted: a sample may hold integers, bytes and plain arrays
only. Shards whose index declares anything else (LitData can also store pickled Python objects, which run code
when read) are refused before a byte of them is decoded.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn

from lightning_cnn.augmentation import Augmentation
from lightning_cnn.data.base import ImageDataModule, _world
from lightning_cnn.data.dataset import ImageFileDataset, _ImageBatches
from lightning_cnn.data.disk_watch import FullDiskWatch
from lightning_cnn.data.shard_format import (
    _FORMAT_VERSION,
    _SPLITS,
    META_FILE,
    _is_remote,
    _litdata,
    check_split_files,
    read_meta,
)
from lightning_cnn.paths import current_umask
from lightning_cnn.registry import DATAMODULES

__all__ = ["ShardedDataModule", "write_shards"]

#: What a sample takes beyond its image, bytes: LitData's header, the label and index, the chunks' index file
#: (measured: 18,000 Fashion-MNIST samples of 784 bytes took 15,067,129 bytes, 837 each).
_SAMPLE_OVERHEAD_BYTES = 56
#: Free space asked for beyond the estimate: chunk and index files, the estimate's own error.
_SPACE_MARGIN = 1.1


# --- writing -----------------------------------------------------------------------------------------------------


class _SampleWriter:
    """``litdata.optimize``'s ``fn``: sample ``i`` of one split as ``{"index", "label", "image"}`` (picklable, so
    LitData's worker processes can run it)."""

    def __init__(self, dataset: _ImageBatches) -> None:
        self.labels = dataset.labels.numpy()
        if isinstance(dataset, ImageFileDataset):
            self.paths: Optional[list[str]] = list(dataset.paths)
            self.images: Optional[np.ndarray] = None
        else:
            self.paths = None
            self.images = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C) uint8

    def __call__(self, index: int) -> dict[str, Any]:
        if self.paths is not None:
            image: Any = Path(self.paths[index]).read_bytes()  # the file as it is: decoded when read back
        else:
            image = np.ascontiguousarray(self.images[index])
        return {"index": int(index), "label": int(self.labels[index]), "image": image}


def _splits_of(datamodule: ImageDataModule) -> dict[str, _ImageBatches]:
    """The datamodule's splits as it would train on them, images at their stored size (an image folder streamed, so
    its files are copied as they are rather than decoded)."""
    if hasattr(datamodule, "in_memory"):
        datamodule.in_memory = False
    datamodule.setup("fit")
    splits = {"train": datamodule.train_set, "val": datamodule.val_set, "test": datamodule.test_set}
    if splits["test"] is splits["val"]:  # an image folder without test/: evaluated on its validation split
        splits["test"] = None
    return {name: split for name, split in splits.items() if split is not None and len(split)}


def write_shards(
    datamodule: ImageDataModule,
    output_dir: Union[str, Path],
    chunk_bytes: str = "64MB",
    num_workers: Optional[int] = None,
    overwrite: bool = False,
) -> Path:
    """Write the datamodule's train/val/test splits as LitData shards under ``output_dir`` and describe them in
    ``lightning_cnn.json``; returns ``output_dir``.

    Args:
        datamodule: Any of the package's datamodules, configured as for training (``val_split``, ``classes``,
            ``train_size``, ``seed``…). Its ``setup`` is called here (an image folder's with ``in_memory`` turned
            off, so its files are copied rather than decoded). A built-in dataset is stored at the size it is
            loaded at; an image folder's ``image_size`` becomes the shards' default size.
        output_dir: A local folder that does not exist yet or is empty.
        chunk_bytes: Size of each chunk file (``"64MB"``): smaller chunks spread better over many workers and ranks;
            larger ones read faster from object storage.
        num_workers: Processes that write (``None``: the CPU count, at most 4).
        overwrite: Replace an ``output_dir`` that already holds files.

    Raises:
        FileExistsError: If ``output_dir`` holds files and ``overwrite`` is false (nothing is touched).
        ImportError: Without LitData.
    """
    litdata = _litdata()
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds files; choose a new output_dir, or pass --overwrite true to replace it."
        )
    splits = _splits_of(datamodule)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(output_dir, splits)
    # Written beside output_dir and moved into place when whole: an interrupted run leaves no half-written shards
    # there, and shards being replaced stay until their successor is complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private (0700); shards follow the umask
        for name, dataset in splits.items():
            with FullDiskWatch(
                staging, where=output_dir.parent
            ):  # the check above cannot see a disk that fills while the writers write
                _optimize(litdata, dataset, staging / name, chunk_bytes, workers)
        meta = _describe(datamodule, splits)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _optimize(litdata: Any, dataset: _ImageBatches, output_dir: Path, chunk_bytes: str, workers: int) -> None:
    litdata.optimize(
        fn=_SampleWriter(dataset),
        inputs=list(range(len(dataset))),
        output_dir=str(output_dir),
        chunk_bytes=chunk_bytes,
        num_workers=max(1, min(workers, len(dataset))),
        mode="overwrite",
        keep_data_ordered=True,  # sample k of a split is the datamodule's sample k, whatever the writers
        verbose=False,
        # Forked writers start at once and need no main-module guard; they only read bytes and arrays.
        start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
    )


def _shard_bytes(splits: dict[str, _ImageBatches]) -> int:
    """About how many bytes the shards of ``splits`` take: each image as it is stored (a file's bytes, or its
    pixels), plus LitData's per-sample header and label."""
    total = 0
    for split in splits.values():
        if isinstance(split, ImageFileDataset):
            total += sum(os.path.getsize(path) for path in split.paths)
        else:
            total += split.images[0].numel() * len(split)
        total += _SAMPLE_OVERHEAD_BYTES * len(split)
    return total


def _check_free_space(output_dir: Path, splits: dict[str, _ImageBatches]) -> None:
    """Refuse to start when the disk cannot hold the shards: LitData's writers wait forever on a full disk.

    Raises:
        OSError: ENOSPC, naming the folder, the bytes needed and the bytes free.
    """
    needed, free = _shard_bytes(splits), shutil.disk_usage(output_dir.parent).free
    if free < needed * _SPACE_MARGIN:
        raise OSError(
            errno.ENOSPC,
            f"No space left for the shards: they need about {needed / 1e6:,.1f} MB, {free / 1e6:,.1f} MB is free",
            str(output_dir.parent),
        )


def _describe(datamodule: ImageDataModule, splits: dict[str, _ImageBatches]) -> dict[str, Any]:
    """What ``lightning_cnn.json`` records: enough for :class:`ShardedDataModule` to build the model's input."""
    first = next(iter(splits.values()))
    encoded = isinstance(first, ImageFileDataset)
    height, width = datamodule.image_size if encoded else first.images.shape[-2:]
    return {
        "format": _FORMAT_VERSION,
        "source": type(datamodule).__name__,
        "encoded": encoded,
        "class_names": list(datamodule.label_names),
        "channels": datamodule.channels,
        "image_size": [int(height), int(width)],
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "splits": {name: len(dataset) for name, dataset in splits.items()},
    }


# --- reading -----------------------------------------------------------------------------------------------------


@DATAMODULES.register("shards", image_size=28)
class ShardedDataModule(ImageDataModule):
    """Train from LitData shards written by :func:`write_shards` (``python cli.py optimize``).

    Args:
        data_dir: The shard folder: local, or a LitData location such as ``s3://bucket/fashion_mnist``.
        image_size: Side (int) or ``(height, width)`` for the network; default: the size the shards store.
        grayscale: Decode encoded images as one channel; default: as the source dataset was read.
        cache_dir: Where LitData keeps chunks downloaded from object storage (default: its own cache folder).
        max_cache_size: The most disk that cache may take (``"50GB"``).

    The other arguments (``batch_size``, ``global_batch_size``, ``num_workers``, ``normalize``,
    ``normalize_from_weights``, ``to_rgb``, ``seed``, ``pin_memory``, ``persistent_workers``, ``train_transform``,
    ``augmentation``) are as for :class:`~lightning_cnn.data.base.ImageDataModule`. ``seed`` drives LitData's
    shuffle; ``persistent_workers`` applies to the validation and test loaders (LitData's training loader starts
    its workers each epoch, which is how they learn the new epoch's order).

    The validation/test split, class subset and training subset were chosen when the shards were written.

    Raises:
        DataNotFoundError: If ``data_dir`` holds no ``lightning_cnn.json``.
        CorruptDataError: If its description or a split's index is not what ``optimize`` writes.
    """

    name = "shards"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        image_size: Union[int, tuple[int, int], None] = None,
        grayscale: Optional[bool] = None,
        num_workers: Optional[int] = None,
        cache_dir: Optional[str] = None,
        max_cache_size: str = "50GB",
        normalize: bool = True,
        normalize_from_weights: Optional[str] = None,
        to_rgb: bool = False,
        seed: int = 42,
        pin_memory: Optional[bool] = None,
        persistent_workers: Optional[bool] = None,
        global_batch_size: Optional[int] = None,
        augmentation: Optional[Augmentation] = None,
        train_transform: Optional[Any] = None,
    ) -> None:
        self.root = data_dir.rstrip("/") if _is_remote(data_dir) else str(Path(data_dir).expanduser())
        meta = read_meta(self.root)
        # Known before the base class checks its options and before the CLI links num_classes into the model.
        self.meta = meta
        self.class_names = tuple(meta["class_names"])
        self.channels = int(meta["channels"])
        self.native_size = tuple(meta["image_size"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.grayscale = self.channels == 1 if grayscale is None else grayscale
        if grayscale is not None:
            self.channels = 1 if grayscale else 3
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_split=0,
            normalize=normalize,
            normalize_from_weights=normalize_from_weights,
            image_size=image_size,
            to_rgb=to_rgb,
            seed=seed,
            download=False,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            train_transform=train_transform,
            global_batch_size=global_batch_size,
            augmentation=augmentation,
        )
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size

    # --- ImageDataModule's interface -------------------------------------------------------------------------

    def locate(self) -> Optional[Path]:
        return None if _is_remote(self.root) else Path(self.root)

    def prepare_data(self) -> None:
        _litdata()  # the one-line install hint before any process starts reading

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from lightning_cnn.data.streaming import ShardReading, ShardSplit, TrainingShards

        splits = [s for s in _SPLITS if s in self.meta["splits"]]
        for split in splits:
            check_split_files(self.root, split)
        mean, std = (self.mean, self.std) if self.normalize else (None, None)
        reading = ShardReading(self.image_size, self.grayscale, self.channels, mean, std, self.to_rgb, self.cache_dir,
                               self.max_cache_size)  # fmt: skip
        self.train_set = TrainingShards(f"{self.root}/train", self.seed, reading, transform=self.train_transform)
        if self.augmentation is not None:
            self._build_augmentation(self.train_set)
        counts = self.meta["splits"]
        self.val_set = ShardSplit(f"{self.root}/val", counts["val"], reading) if "val" in splits else None
        self.test_set = ShardSplit(f"{self.root}/test", counts["test"], reading) if "test" in splits else self.val_set
        if "test" not in splits and "val" in splits:
            rank_zero_warn(f"{self.root} has no test split: the test split is the validation split.")

    def _build_augmentation(self, train_set: Any) -> None:  # the per-sample part goes to `augment`, see streaming.py
        seed = self.augmentation.resolve_seed(self.trainer.global_rank if self.trainer is not None else 0)
        train_set.augment = self.augmentation.per_sample_transform(seed)
        self.batch_augment = self.augmentation.batch_transform(seed, train_set.mean, train_set.std)

    def _train_position(self) -> Optional[tuple[int, int]]:
        loader = self._train_loader
        if loader is None or not hasattr(loader, "current_epoch"):
            return None
        return loader.current_epoch, loader.batches_handed_out

    def train_dataloader(self) -> Any:
        from lightning_cnn.data.streaming import ShardLoader

        if self.train_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        workers = self.num_workers if self.num_workers is not None else min(4, os.cpu_count() or 1)
        world_size, _ = _world(self)
        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        self._train_loader = ShardLoader(
            self.train_set, batch_size=self.per_process_batch_size(world_size), num_workers=workers, pin_memory=pin
        )
        return self._train_loader
