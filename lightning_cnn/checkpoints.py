"""Checkpoint files: read as untrusted (``weights_only=True``) and checked against the model they are meant for,
with one-line errors instead of tracebacks; written whole or not at all."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from lightning_fabric.plugins import TorchCheckpointIO
from torch import Tensor, nn

from lightning_cnn.paths import written_whole
from lightning_cnn.preprocessing import Preprocessing

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "check_state_dict_fits",
    "checkpoint_preprocessing",
    "load_checkpoint",
    "load_untrusted",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model it is loaded into."""


def load_untrusted(path: Union[str, Path]) -> Any:
    """``torch.load`` of a file a user points at: on the CPU, tensors and plain containers only.

    Raises:
        CheckpointError: If the file does not exist or is not a PyTorch file of that kind.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give the path of a .ckpt file, e.g. "
            "runs/<experiment>/version_N/checkpoints/last.ckpt."
        )
    try:
        # weights_only: tensors and plain containers only; unpickling anything else could run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — whatever a foreign file makes torch.load raise, it is not a checkpoint
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint/state dict, or it holds Python objects besides tensors, which "
                "are not loaded from files a user points at (unpickling them could run code)."
            ) from None
        lines = str(err).strip().splitlines()
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint/state dict ({type(err).__name__}: "
            f"{lines[0][:160] if lines else 'unreadable'})."
        ) from None


def load_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """The checkpoint dict saved by Lightning at ``path``, on the CPU.

    Raises:
        CheckpointError: If the file does not exist or is not a Lightning/PyTorch checkpoint.
    """
    loaded = load_untrusted(path)
    if not isinstance(loaded, Mapping) or not isinstance(loaded.get("state_dict"), Mapping):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (no state_dict); give a .ckpt written by "
            "cli.py fit."
        )
    return dict(loaded)


def checkpoint_preprocessing(checkpoint: Union[str, Path, Mapping[str, Any]]) -> Preprocessing:
    """The preprocessing (class names, size, channels, normalization) an ``ImageClassifier`` checkpoint records.

    Args:
        checkpoint: A checkpoint path, or a checkpoint already loaded with :func:`load_checkpoint`.

    Raises:
        CheckpointError: If the file is not a checkpoint, or it records no preprocessing (written before
            checkpoints carried it).
    """
    loaded = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    record = (loaded.get("hyper_parameters") or {}).get("preprocessing")
    if not record:
        where = checkpoint if isinstance(checkpoint, (str, Path)) else "the checkpoint"
        raise CheckpointError(
            f"{where} records no preprocessing (class names, image size, normalization) to apply to new images or "
            "build into an export; predict on the test split with the config it was trained with instead "
            "(--config <its run folder>/config.yaml)."
        )
    return Preprocessing.from_dict(record)


def check_state_dict_fits(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise one line naming the first layer whose shape differs (or the first missing/unexpected key).

    Raises:
        CheckpointError: If ``state`` cannot be loaded into ``model`` strictly.
    """
    expected = model.state_dict()
    for key, value in expected.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source} does not fit the model: {key} is {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(value.shape)} in the model built from the config (another architecture or number of "
                "classes); use the config the checkpoint was trained with."
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        which = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which the model lacks"
        count = len(missing) + len(unexpected)
        raise CheckpointError(
            f"{source} does not fit the model: the checkpoint {which} ({count} key(s) differ; another "
            "architecture); use the config the checkpoint was trained with."
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made all-or-nothing on local disks: the file is written under a temporary
    name beside the target and renamed over it once complete, so a full disk or a kill mid-write leaves the
    previous ``last.ckpt`` / ``best-*.ckpt`` intact instead of a truncated file that does not load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # object storage: its own semantics
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with written_whole(Path(path)) as partial:
            super().save_checkpoint(checkpoint, partial, storage_options)
