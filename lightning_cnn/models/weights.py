"""Where a :class:`~lightning_cnn.models.TorchvisionNet`'s pretrained weights come from, and what they expect.

``weights`` is one of:

- ``None`` / ``"none"``: random initialisation;
- a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or the full ``"VGG16_Weights.IMAGENET1K_V1"``):
  read through torchvision's own path, i.e. from ``$TORCH_HOME/hub/checkpoints/<file>`` when present, else
  downloaded there once;
- a path to a local state-dict file of the whole torchvision model (e.g. the file torchvision downloads, copied
  to a cluster node without internet).

The preprocessing the weights were trained with (input size, mean/std) is read from the weights' own
``transforms()`` by :func:`weights_preprocessing`; a datamodule takes it with ``normalize_from_weights``. Every
file is read with ``weights_only=True``, and a file that does not fit is reported key by key.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "load_backbone_weights",
    "load_pretrained",
    "load_state_dict_file",
    "random_init",
    "skip_pretrained_weights",
    "weights_name_for",
    "weights_preprocessing",
]

# Set inside `skip_pretrained_weights()`: networks are rebuilt for a checkpoint whose state dict holds the weights.
_SKIP_PRETRAINED = contextvars.ContextVar("skip_pretrained_weights", default=False)

# How many mismatched keys an error message lists before it says "...".
_KEYS_SHOWN = 6


class WeightsMismatchError(ValueError):
    """A weights file does not fit the architecture it is loaded into."""


class WeightsUnavailableError(RuntimeError):
    """Named weights are neither in torchvision's cache nor downloadable."""


def random_init(weights: Optional[str]) -> bool:
    """Whether ``weights`` asks for random initialisation: ``None``, ``""``, ``"none"`` or ``"null"``."""
    return weights is None or str(weights).strip().lower() in ("", "none", "null")


def _looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or "/" in weights
        or weights.endswith((".pt", ".pth", ".ckpt", ".bin"))
        or Path(weights).exists()
    )


def load_state_dict_file(path: Union[str, Path]) -> dict[str, Tensor]:
    """Load a state dict (or a Lightning checkpoint's ``state_dict``) from ``path`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        lightning_cnn.checkpoints.CheckpointError: If it is not a PyTorch file of tensors.
        WeightsMismatchError: If the file holds no state dict.
    """
    from lightning_cnn.checkpoints import load_untrusted

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; give the path of a saved state dict.")
    loaded = load_untrusted(path)  # weights_only: a weights file may come from anywhere
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # a Lightning checkpoint
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise WeightsMismatchError(
            f"{path} does not hold a state dict (found {type(loaded).__name__}); save one with "
            "torch.save(model.state_dict(), path)."
        )
    return dict(loaded)


def _mismatch_message(module: nn.Module, state: Mapping[str, Tensor], what: str, source: str) -> Optional[str]:
    """Describe the missing, unexpected and wrongly shaped keys of ``state`` for ``module``; ``None`` if it fits."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def show(keys: list[str]) -> str:
        more = f", ... ({len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else ""
        return ", ".join(keys[:_KEYS_SHOWN]) + more

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {show(shapes)}")
    return f"{source} does not fit {what} ({'; '.join(parts)}); use weights saved from the same architecture."


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str, source: str) -> None:
    message = _mismatch_message(module, state, what, source)
    if message is not None:
        raise WeightsMismatchError(message)
    module.load_state_dict(state)


def load_backbone_weights(backbone: nn.Module, path: Union[str, Path]) -> None:
    """Load pretrained weights into ``backbone`` from a file.

    The file may be a Lightning checkpoint of :class:`~lightning_cnn.ImageClassifier` (keys ``net.backbone.*``),
    a network's state dict (``backbone.*``) or the backbone's own state dict; the first prefix under which the
    keys match is used, and the head's weights in the file are ignored.

    Raises:
        WeightsMismatchError: If no reading of the file fits the backbone; names the mismatched keys.
    """
    state = load_state_dict_file(path)
    expected = set(backbone.state_dict())
    for prefix in ("net.backbone.", "backbone.", ""):
        candidate = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(candidate) == expected:
            _load_strict(backbone, candidate, "the backbone", str(path))
            return
    # None matched exactly: report against the reading that shares the most keys.
    best = max(
        ({k[len(p) :]: v for k, v in state.items() if k.startswith(p)} for p in ("net.backbone.", "backbone.", "")),
        key=lambda c: len(expected & set(c)),
    )
    _load_strict(backbone, best, "the backbone", str(path))


@contextmanager
def skip_pretrained_weights() -> Iterator[None]:
    """Within this block, :class:`TorchvisionNet` builds its layers without loading its pretrained ``weights``.

    For rebuilding a network whose weights come from a checkpoint right afterwards
    (:meth:`ImageClassifier.load_from_checkpoint <lightning_cnn.ImageClassifier.load_from_checkpoint>`, and the CLI's
    ``--ckpt_path``): the original weights file, torchvision's cache or the network are then not needed.
    """
    token = _SKIP_PRETRAINED.set(True)
    try:
        yield
    finally:
        _SKIP_PRETRAINED.reset(token)


def _resolve_weights(arch: str, name: str) -> Any:
    """The torchvision ``WeightsEnum`` member for ``arch`` named ``name`` (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or
    ``"VGG16_Weights.IMAGENET1K_V1"``), through torchvision's own ``WeightsEnum.verify``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    try:
        return enum.verify(name)
    except KeyError:
        names = [w.name for w in enum]
        raise ValueError(
            f"weights={name!r} is not a torchvision weights name of {arch} (known: {names}, 'DEFAULT'); "
            "give one of those, a path to a local state-dict file, or 'none'."
        ) from None


def weights_name_for(arch: str, weights: Optional[str]) -> Optional[str]:
    """The full torchvision name (``"VGG16_Weights.IMAGENET1K_V1"``) of ``TorchvisionNet(arch, weights)``'s named
    weights, whose preprocessing the data must follow; ``None`` for random initialisation or a local file.

    Raises:
        ValueError: If ``weights`` is not a weights name of ``arch``.
    """
    if random_init(weights) or _looks_like_path(str(weights)):
        return None
    member = _resolve_weights(arch, str(weights))
    return f"{type(member).__name__}.{member.name}"


def weights_preprocessing(name: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, int]]:
    """Mean, std and input size that torchvision weights were trained with, read from ``weights.transforms()``.

    Args:
        name: Full weights name, e.g. ``"VGG16_Weights.IMAGENET1K_V1"`` (or ``"VGG16_Weights.DEFAULT"``).

    Returns:
        ``(mean, std, (height, width))``; the size is the transforms' crop size.

    Raises:
        ValueError: If ``name`` is not a torchvision weights name.
    """
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(
            f"normalize_from_weights={name!r} is not a torchvision weights name; use the full form "
            "'<Model>_Weights.<NAME>', e.g. 'VGG16_Weights.IMAGENET1K_V1' or 'ResNet18_Weights.DEFAULT'."
        ) from None
    preset = weights.transforms()
    crop = list(preset.crop_size)
    size = (crop[0], crop[-1])
    return tuple(float(m) for m in preset.mean), tuple(float(s) for s in preset.std), size


def load_pretrained(model: nn.Module, arch: str, weights: str) -> None:
    """Load ``weights`` (a torchvision weights name of ``arch`` or a state-dict file) into the whole torchvision
    ``model``; inside :func:`skip_pretrained_weights` nothing is loaded.

    Raises:
        ValueError: If ``weights`` is not a weights name of ``arch``.
        WeightsUnavailableError: If named weights are not cached and cannot be downloaded.
        WeightsMismatchError: If the weights do not fit ``model``; names the mismatched keys.
    """
    if _SKIP_PRETRAINED.get():
        return
    if _looks_like_path(weights):
        _load_strict(model, load_state_dict_file(weights), f"torchvision's {arch}", f"weights file {weights}")
        return
    member = _resolve_weights(arch, weights)
    # torchvision's own loader: reads $TORCH_HOME/hub/checkpoints/<file name of member.url> when it is there
    # (no download, no hash check), else downloads it there and checks the hash. weights_only=True because a
    # cached file is just a file someone put there.
    try:
        state = member.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as err:  # URLError is an OSError: no network
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)
        raise WeightsUnavailableError(
            f"weights={weights!r}: {cache} is not there and downloading {member.url} failed ({err}); "
            "offline, copy that file to this path or set weights to a local state-dict file."
        ) from None
    _load_strict(model, state, f"torchvision's {arch}", f"cached weights {member}")
