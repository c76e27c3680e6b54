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

__all__ = ["RNGStateCheckpoint"]


class RNGStateCheckpoint(pl.Callback):
    """Save the Python, NumPy, torch (and CUDA) generator states in every checkpoint; restore them on resume.

    The states are captured when the checkpoint is written (after a training step) and put back when the resumed
    training starts (``on_train_start``: after the sanity check, before the first batch is fetched; Lightning
    skips ``on_train_epoch_start`` when it resumes mid-epoch) — the point where the uninterrupted run stood. Only rank 0 writes checkpoints, so under DDP every rank resumes with rank 0's states (with
    ``seed_everything`` all ranks start from the same seed and draw alike). DataLoader worker processes seed
    themselves and are not covered.
    """

    def __init__(self) -> None:
        self._to_restore: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Not now: between loading and the first resumed batch Lightning builds loaders and may run a sanity
        # check, which draw numbers the uninterrupted run drew before the checkpoint.
        self._to_restore = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._to_restore is not None:
            self._restore(self._to_restore)
            self._to_restore = None

    @staticmethod
    def _restore(state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        _set_numpy_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


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
