"""Keep the random generators in checkpoints, so a resumed run draws the same numbers (dropout masks, augmentation
in the main process) as the run it continues.

Lightning's checkpoints hold the weights, optimizer and loop progress but not the generators' states; without them
a run resumed mid-epoch trains the remaining batches with different dropout masks than the uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["RNGStateCheckpoint"]


class RNGStateCheckpoint(pl.Callback):
    """Save the Python, NumPy, torch (and CUDA) generator states in every checkpoint; restore them on resume.

    The states are captured when the checkpoint is written (after a training step) and put back when the resumed
    training starts (``on_train_start``: after the sanity check, before the first batch is fetched; Lightning
    skips ``on_train_epoch_start`` when it resumes mid-epoch) — the point where the uninterrupted run stood.

    Under DDP every process has its own generators (each GPU's CUDA generator above all): the checkpoint holds
    one set per rank, gathered when it is written (Lightning builds a checkpoint's contents on every rank), and
    each rank restores its own. A run resumed with another number of processes cannot continue the same random
    streams: each rank then restores the set of ``rank % saved ranks``, with a warning. DataLoader worker
    processes are not covered; the augmentation they run is keyed by epoch and batch instead.
    """

    def __init__(self) -> None:
        self._to_restore: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        local = _local_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, local)
            return {"per_rank": per_rank}
        return {"per_rank": [local]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Not now: between loading and the first resumed batch Lightning builds loaders and may run a sanity
        # check, which draw numbers the uninterrupted run drew before the checkpoint.
        self._to_restore = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._to_restore is not None:
            self.restore(self._to_restore, trainer.global_rank, trainer.world_size)
            self._to_restore = None

    @staticmethod
    def restore(state: dict[str, Any], rank: int, world_size: int) -> None:
        """Put back ``rank``'s generator states from a checkpoint's ``state``."""
        per_rank = state.get("per_rank") or [state]  # checkpoints written before per-rank states: one set
        if len(per_rank) != world_size:
            rank_zero_warn(
                f"the checkpoint holds random states for {len(per_rank)} process(es), this run has {world_size}: "
                "the resumed run draws other random numbers than an uninterrupted one would."
            )
        states = per_rank[rank % len(per_rank)]
        random.setstate(states["python"])
        _set_numpy_state(states["numpy"])
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def _local_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


# Checkpoints are loaded with torch.load(weights_only=True), which refuses NumPy arrays: keep NumPy's state as a
# tensor and plain numbers.
def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))
