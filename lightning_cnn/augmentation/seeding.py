"""Seeding of the augmentation draws: per batch, per pipeline and per DataLoader worker."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    import albumentations as A

__all__ = ["draw_seed", "seed_worker"]


def draw_seed(*keys: int) -> int:
    """A seed made from integers (the augmentation's seed, the epoch, the samples or the batch number).

    Each batch's augmentation is drawn from a generator seeded with what identifies the batch, not from one stream
    running through the epoch: the same batch gets the same draws whichever worker process makes it, with any
    number of workers, and in a run resumed mid-epoch exactly as in the uninterrupted run.
    """
    return int(np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(1)[0])


def _seeded(pipeline: A.Compose, seed: Optional[int]) -> A.Compose:
    """Seed a pipeline with *one* random stream shared by all its transforms.

    ``Compose(seed=s)`` (Albumentations 2.0) gives every transform its own generator seeded with the same ``s``, so
    transforms that draw alike decide alike: ``HorizontalFlip`` and ``VerticalFlip`` would always flip together.
    """
    if seed is not None:
        pipeline.seed = seed
        pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy's and Python's global generators from the worker's own seed.

    Albumentations pipelines draw from their own generators, which the dataset reseeds for every batch (see
    :func:`draw_seed`); this covers a user's transform that draws from the global generators, so workers do not
    all draw alike.
    """
    info = torch.utils.data.get_worker_info()
    worker_seed = info.seed if info is not None else torch.initial_seed()
    seed = draw_seed(worker_seed)
    np.random.seed(seed)
    random.seed(seed)
