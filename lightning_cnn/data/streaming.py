"""The LitData side of :class:`~lightning_cnn.data.shards.ShardedDataModule`, imported only when shards are read
(LitData is an optional extra).

- :class:`TrainingShards`: LitData's ``StreamingDataset`` over the training split, each sample decoded, resized,
  augmented (seeded by the epoch and the sample's index) and normalized in the loader worker that reads it;
- :class:`ShardLoader`: LitData's ``StreamingDataLoader``, which shards the split over ranks and workers and
  saves its position in checkpoints, plus the batch count the batched augmentation is keyed by;
- :class:`ShardSplit`: a validation or test split read by index, batch by batch, so evaluation can give each image
  to exactly one process as the other datamodules do.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.serializers import _SERIALIZERS, Serializer
from torch import Tensor

from lightning_cnn.data.dataset import _ImageBatches, augment_uint8, channel_stats, decode_or_warn
from lightning_cnn.data.errors import CorruptDataError
from lightning_cnn.data.shard_format import SAFE_FORMATS
from lightning_cnn.preprocessing import normalize_uint8, resize_uint8

__all__ = ["ShardLoader", "ShardReading", "ShardSplit", "TrainingShards"]

# Lightning warns that an IterableDataset's len() may count samples twice across workers; LitData's is each
# process' own share, split between its workers, so the warning does not apply to these loaders.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class _Refused(Serializer):
    """Stands in for every LitData serializer outside :data:`~lightning_cnn.data.shard_format.SAFE_FORMATS`: a shard
    that declares one is refused instead of deserialized (the index check at setup names it first)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def serialize(self, item: Any) -> tuple[bytes, Optional[str]]:
        raise CorruptDataError(f"sample format {self.name!r} is not written by lightning_cnn")

    def deserialize(self, data: bytes) -> Any:
        raise CorruptDataError(f"shard sample in format {self.name!r} refused: only {sorted(SAFE_FORMATS)} are read.")

    def can_serialize(self, item: Any) -> bool:
        return False


def _safe_serializers() -> dict[str, Serializer]:
    return {name: _Refused(name) for name in _SERIALIZERS if name not in SAFE_FORMATS}


class _SampleDecoder:
    """A stored sample (``{"index", "label", "image"}``) → a uint8 ``(C, H, W)`` image at ``size``."""

    def __init__(self, size: tuple[int, int], grayscale: bool, channels: int) -> None:
        self.size = tuple(size)
        self.grayscale = grayscale
        self.channels = channels
        self._reported: set[str] = set()

    def __call__(self, sample: dict[str, Any], where: str) -> Optional[Tensor]:
        image = sample["image"]
        if isinstance(image, np.ndarray):  # a built-in dataset's uint8 (H, W, C) array
            if image.dtype != np.uint8 or image.ndim != 3:
                raise CorruptDataError(
                    f"sample {sample.get('index')} of {where} is a {image.dtype} array of shape {image.shape}, not "
                    "uint8 (height, width, channels); write the shards again with python cli.py optimize."
                )
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            if pixels.shape[0] != self.channels:
                pixels = pixels[:1] if self.channels == 1 else pixels.expand(self.channels, -1, -1)
            return resize_uint8(pixels[None], self.size)[0]
        name = f"sample {sample['index']} of {where}"
        return decode_or_warn(io.BytesIO(bytes(image)), name, self.grayscale, self.size, self._reported)


@dataclass(frozen=True)
class ShardReading:
    """How every split of the shards is read: the network's image size and channels, the normalization, and where
    LitData caches chunks fetched from object storage."""

    size: tuple[int, int]
    grayscale: bool
    channels: int
    mean: Optional[Sequence[float]]
    std: Optional[Sequence[float]]
    to_rgb: bool
    cache_dir: Optional[str] = None
    max_cache_size: str = "50GB"

    def stream_options(self) -> dict[str, Any]:
        """LitData's ``StreamingDataset`` options besides the folder, the order and the seed."""
        return dict(cache_dir=self.cache_dir, max_cache_size=self.max_cache_size, serializers=_safe_serializers())

    def decoder(self) -> _SampleDecoder:
        return _SampleDecoder(self.size, self.grayscale, self.channels)


class TrainingShards(StreamingDataset):
    """The training split as LitData streams it: shuffled by chunks with ``seed`` (a new order every epoch), shared
    out between nodes, ranks and workers. Yields ``(image, label)``: uint8 ``(C, H, W)`` at the network's size,
    after the per-sample augmentation ``augment`` (the loader's collate normalizes whole batches); ``None`` for a
    sample whose image cannot be decoded (the collate drops it).
    """

    def __init__(
        self,
        input_dir: str,
        seed: int,
        reading: ShardReading,
        transform: Optional[Callable[..., dict[str, Any]]] = None,
    ) -> None:
        super().__init__(input_dir=input_dir, shuffle=True, seed=seed, **reading.stream_options())
        self.where = input_dir
        self.decoder = reading.decoder()
        out_channels = 3 if reading.to_rgb else reading.channels
        self.mean, self.std = channel_stats(reading.mean, out_channels), channel_stats(reading.std, out_channels)
        self.to_rgb = reading.to_rgb
        #: Per-sample augmentation (Albumentations-style), set by the datamodule. Not called ``transform``: LitData
        #: applies any attribute of that name to the raw sample.
        self.augment = transform

    def __getitem__(self, index: Any) -> Any:
        sample = super().__getitem__(index)
        if not isinstance(sample, dict):  # slices and keys: LitData's own uses
            return sample
        image = self.decoder(sample, self.where)
        if image is None:
            return None
        if self.augment is not None:
            image = augment_uint8(self.augment, image[None], self.current_epoch, [int(sample["index"])])[0]
        return image, int(sample["label"])


class _Collate:
    """The loader's ``collate_fn``: the samples that decoded stacked into a uint8 batch, then normalized as one
    (cheaper than image by image), as the other datasets build their batches."""

    def __init__(self, mean: Optional[Tensor], std: Optional[Tensor], to_rgb: bool) -> None:
        self.mean, self.std, self.to_rgb = mean, std, to_rgb

    def __call__(self, samples: list[Any]) -> tuple[Tensor, Tensor]:
        kept = [s for s in samples if s is not None]
        if not kept:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        images = torch.stack([image for image, _ in kept])
        labels = torch.tensor([label for _, label in kept], dtype=torch.long)
        return normalize_uint8(images, self.mean, self.std, self.to_rgb), labels


class ShardLoader(StreamingDataLoader):
    """LitData's loader (its ``state_dict`` is saved in every checkpoint and restored on resume), counting the batches
    of the current epoch so batched augmentation draws are keyed by the batch, as for the other datamodules."""

    def __init__(self, dataset: TrainingShards, batch_size: int, num_workers: int, pin_memory: bool) -> None:
        collate = _Collate(dataset.mean, dataset.std, dataset.to_rgb)
        super().__init__(
            dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate
        )
        self.batches_handed_out = 0

    def __iter__(self) -> Iterator[Any]:
        resumed = self.restore
        self.batches_handed_out = self._num_samples_yielded_streaming // self.batch_size if resumed else 0
        # Building an iterator draws the workers' base seed from this generator, else from the global one: seeded
        # by the epoch about to run, the draw neither shifts dropout's numbers nor differs after a resume.
        epoch = self.current_epoch if resumed else self.current_epoch + 1
        self.generator = torch.Generator().manual_seed(self.dataset.seed + epoch)
        for batch in super().__iter__():
            self.batches_handed_out += 1
            yield batch


class ShardSplit(_ImageBatches):
    """A validation or test split of the shards, read by index in batches (``__getitems__``), so a sampler can
    give each image to exactly one process."""

    decodes_files = True

    def __init__(self, input_dir: str, length: int, reading: ShardReading) -> None:
        r = reading
        super().__init__(torch.zeros(0, dtype=torch.long), r.channels, r.mean, r.std, r.to_rgb, None, r.size)
        self.length = int(length)  # all of the split: LitData's own len() is one process' share under DDP
        self.stream = StreamingDataset(input_dir=input_dir, shuffle=False, **reading.stream_options())
        self.where = input_dir
        self.decoder = reading.decoder()

    def __len__(self) -> int:
        return self.length

    def _load(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for index in indices:
            sample = self.stream[int(index)]
            image = self.decoder(sample, self.where)
            if image is not None:
                images.append(image)
                labels.append(int(sample["label"]))
        if not images:
            return torch.zeros((0, self.decoder.channels, *self.size), dtype=torch.uint8), torch.zeros(
                0, dtype=torch.long
            )
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)
