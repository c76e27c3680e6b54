"""Training-set order that is the same on 1 or N processes and survives a mid-epoch restart.

Two pieces, used by :class:`~lightning_cnn.data.base.ImageDataModule` for the training loader:

- :class:`ResumableShuffleSampler` — the epoch's order is ``randperm(n)`` from a generator seeded with
  ``seed + epoch`` (never the global RNG), and process ``r`` of ``W`` takes every ``W``-th index starting at ``r``
  (:class:`~torch.utils.data.DistributedSampler`'s layout). So the ``k``-th batch of all processes together is
  the ``k``-th batch of a single process with a ``W`` times larger batch: same samples, same gradient.
- :class:`ResumableDataLoader` — a DataLoader with ``state_dict``/``load_state_dict``, which Lightning saves in
  every checkpoint and loads before the restarted epoch's iterator is built; the sampler then skips the batches
  the interrupted run had already trained on.

Lightning counts a sized loader's batches without prefetching, so the number of batches this loader has handed
out when a checkpoint is written is exactly the number trained on. Worker processes prefetch from the sampler,
which is why the count is kept here, at the loader's output, not in the sampler.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_cnn.augmentation.seeding import seed_worker
from lightning_cnn.data.dataset import _collate_batch

__all__ = ["ResumableDataLoader", "ResumableShuffleSampler"]


class ResumableShuffleSampler(DistributedSampler):
    """Seeded per-epoch shuffle, sharded over processes, able to start mid-epoch.

    A :class:`~torch.utils.data.DistributedSampler` subclass, so Lightning keeps it under DDP instead of swapping
    in its own; with one process it yields the whole permutation. As in ``DistributedSampler(drop_last=False)``,
    when the dataset size is not a multiple of the number of processes the order is padded with its own first
    indices so every process gets the same number of samples.

    Args:
        dataset: The (sized) training set.
        num_replicas: Number of processes (the world size).
        rank: This process' rank in ``[0, num_replicas)``.
        seed: Base seed; epoch ``e`` uses ``seed + e`` on every process.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._skip = 0  # samples of this process to skip on the next iteration (set when resuming)

    def epoch_order(self) -> list[int]:
        """This process' indices for the current epoch, before any skipping."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        padding = self.total_size - len(order)
        if padding > 0:
            order += (order * math.ceil(padding / len(order)))[:padding]
        return order[self.rank : self.total_size : self.num_replicas]

    def skip_next(self, num_samples: int) -> None:
        """Start the next iteration ``num_samples`` into this process' epoch order (one iteration only)."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.epoch_order()[skip:])

    def __len__(self) -> int:
        # The full epoch, also when resuming: Lightning sizes the epoch from len() and counts the skipped
        # batches as already done.
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableShuffleSampler` whose position Lightning checkpoints.

    ``state_dict()`` is the epoch and the number of batches handed out by the current iteration; after
    ``load_state_dict()``, the next iteration starts at that batch of that epoch.
    """

    sampler: ResumableShuffleSampler

    def __init__(
        self, dataset: Dataset, sampler: ResumableShuffleSampler, limit_batches: Union[int, float] = 1.0, **kwargs: Any
    ) -> None:
        if not isinstance(sampler, ResumableShuffleSampler):
            raise TypeError(f"sampler={type(sampler).__name__}; ResumableDataLoader needs a ResumableShuffleSampler.")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.limit_batches = limit_batches
        self._batches_handed_out = 0
        self._resume_at: Optional[int] = None

    @property
    def batches_per_epoch(self) -> int:
        """The batches Lightning takes per epoch: ``len(self)`` cut by ``limit_train_batches`` (an int is a count,
        a float a fraction, as Lightning reads it)."""
        if isinstance(self.limit_batches, int):
            return min(len(self), self.limit_batches)
        return int(len(self) * self.limit_batches)

    @property
    def batches_handed_out(self) -> int:
        """Batches of the current epoch handed out so far (the one just handed out is number ``n - 1``)."""
        return self._batches_handed_out

    def __iter__(self) -> Iterator[Any]:
        start = self._resume_at or 0
        self._resume_at = None
        if start:
            self.sampler.skip_next(start * self._batch_size_for_skip())
        self._batches_handed_out = start
        if hasattr(self.dataset, "set_epoch"):  # per-sample augmentation keyed by the epoch
            self.dataset.set_epoch(self.sampler.epoch)
        # Building an iterator draws the workers' base seed; from a per-epoch generator rather than the global
        # one, the draw neither shifts the numbers training draws (dropout) nor depends on when it happens.
        self.generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
        for batch in super().__iter__():
            self._batches_handed_out += 1
            yield batch

    def _batch_size_for_skip(self) -> int:
        if self.batch_size is None:
            raise RuntimeError("ResumableDataLoader needs batch_size to skip whole batches when resuming.")
        return self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._batches_handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= self.batches_per_epoch:  # saved after the epoch's last batch: start the next epoch
            epoch, batches = epoch + 1, 0
        # Lightning also calls set_epoch, but only after this iterator may already have drawn from the sampler.
        self.sampler.set_epoch(epoch)
        self._resume_at = batches


# With a per-sample augmentation the loader, not the model, is the bottleneck on small images.
_AUTO_WORKERS_WITH_TRANSFORM = 4
# Batches each augmenting worker keeps ready: evens out the per-batch cost of per-sample augmentation.
_PREFETCH_WITH_TRANSFORM = 4


# How loader workers of file-decoding datasets start (None: the platform's default).
_SAFE_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


def loader_options(
    dataset: Any, num_workers: Optional[int], persistent_workers: Optional[bool], pin_memory: Optional[bool]
) -> dict[str, Any]:
    """The DataLoader options of a split: ``None`` settings chosen for its work. Per-sample augmentation and
    decoding files are the loader's work, so such a split gets workers by default; arrays in memory are cut into
    batches faster than a worker could ship them."""
    busy = dataset.transform is not None or dataset.decodes_files
    workers = num_workers
    if workers is None:
        workers = min(_AUTO_WORKERS_WITH_TRANSFORM, os.cpu_count() or 1) if busy else 0
    persistent = persistent_workers if persistent_workers is not None else workers > 0
    augmenting = busy and workers > 0
    # Workers that decode files start from a fresh forkserver rather than by forking this process: a fork while
    # another Python thread of it ends (a finished loader's, LitData's) can leave the worker deadlocked before it
    # runs a line, on Python before 3.11.8 / 3.12.1 (CPython gh-112275; seen under DDP, between fit and test). Such
    # a dataset is a list of files or shard positions, cheap to send to each worker; arrays in memory keep fork,
    # which shares their pages instead of copying them.
    start = _SAFE_START if dataset.decodes_files and workers > 0 else None
    return dict(
        multiprocessing_context=start,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=pin_memory if pin_memory is not None else torch.cuda.is_available(),
        collate_fn=_collate_batch,
        worker_init_fn=seed_worker if augmenting else None,
        prefetch_factor=_PREFETCH_WITH_TRANSFORM if augmenting else None,
    )
