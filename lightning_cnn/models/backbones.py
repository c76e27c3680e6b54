"""Pretrained torchvision classifiers as a ``backbone`` + a new ``head``: Keras' ``include_top=False`` fine-tuning.

The slides' fine-tuning recipe is ``VGG16(weights="imagenet", include_top=False)`` followed by a new classifier
(``Flatten → Dense 1024 relu → Dropout 0.5 → Dense N``). :class:`TorchvisionNet` does that for any supported
torchvision classification model: the convolutional part becomes ``backbone`` (what
:class:`~lightning_cnn.callbacks.FreezeBackbone` freezes) and the classifier is rebuilt for ``num_classes``.

Where the weights come from (``weights``):

- ``None`` / ``"none"``: random initialisation;
- a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or the full ``"VGG16_Weights.IMAGENET1K_V1"``):
  read through torchvision's own path, i.e. from ``$TORCH_HOME/hub/checkpoints/<file>`` when present, else
  downloaded there once;
- a path to a local state-dict file of the whole torchvision model (e.g. the file torchvision downloads, copied
  to a cluster node without internet).

The preprocessing the weights were trained with (input size, mean/std) is read from the weights' own
``transforms()`` by :func:`weights_preprocessing`; a datamodule takes it with ``normalize_from_weights``.
"""

from __future__ import annotations

import contextvars
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_cnn.models.layers import Dense, Dropout, input_too_small
from lightning_cnn.registry import ARCHITECTURES

__all__ = [
    "SUPPORTED_FAMILIES",
    "TorchvisionNet",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "load_backbone_weights",
    "load_state_dict_file",
    "skip_pretrained_weights",
    "weights_name_for",
    "weights_preprocessing",
]

# Model families whose convolutional part is the `features` child (the rest is avgpool + classifier).
_FEATURES_FAMILIES = ("vgg", "alexnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext")
# Families whose convolutional part is every child but the final pooling and `fc`.
_FC_FAMILIES = ("resnet", "resnext", "wide_resnet", "regnet", "shufflenet")
_FC_DROPPED = ("avgpool", "fc")
#: Prefixes of the torchvision model names :class:`TorchvisionNet` can cut into backbone + head. Not included:
#: densenet (its released weights need a key rewrite), inception/googlenet (auxiliary heads, own input scaling),
#: and the transformers (vit, swin, maxvit), whose features are not a spatial map.
SUPPORTED_FAMILIES = _FEATURES_FAMILIES + _FC_FAMILIES

# Set inside `skip_pretrained_weights()`: networks are rebuilt for a checkpoint whose state dict holds the weights.
_SKIP_PRETRAINED = contextvars.ContextVar("skip_pretrained_weights", default=False)

# How many mismatched keys an error message lists before it says "...".
_KEYS_SHOWN = 6

Pooling = Literal["auto", "flatten", "avg", "max"]


class WeightsMismatchError(ValueError):
    """A weights file does not fit the architecture it is loaded into."""


class WeightsUnavailableError(RuntimeError):
    """Named weights are neither in torchvision's cache nor downloadable."""


def _is_none(weights: Optional[str]) -> bool:
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
    """The torchvision ``WeightsEnum`` member for ``arch`` named ``name`` (short or ``Enum.MEMBER`` form)."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    if member == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[member]
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
    if _is_none(weights) or _looks_like_path(str(weights)):
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


def _cut(arch: str, model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The named layers of ``model``'s convolutional part, keeping torchvision's child names (so keys match)."""
    if arch.startswith(_FEATURES_FAMILIES):
        return OrderedDict(model.features.named_children())
    return OrderedDict((n, m) for n, m in model.named_children() if n not in _FC_DROPPED)


class _GrayToRGB(nn.Module):
    """Repeat a single-channel image to three channels, as networks pretrained on RGB expect."""

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class _GlobalMaxPool(nn.AdaptiveMaxPool2d):
    def __init__(self) -> None:
        super().__init__(1)


@ARCHITECTURES.register("torchvision", arch="resnet18", weights=None)
class TorchvisionNet(nn.Module):
    """A torchvision classification model without its classifier (Keras' ``include_top=False``) and a new head.

    ``backbone`` holds the model's convolutional layers under torchvision's names (for VGG16: its 31 ``features``
    layers, 14,714,688 parameters as Keras' ``VGG16(include_top=False)``); ``head`` is
    ``[Flatten | global pooling] → (Dense units → Dropout)… → Dense num_classes``.

    Args:
        in_channels: Image channels (linked from the datamodule): 3, or 1 for grayscale, which is repeated to 3.
        num_classes: Number of classes; with 2 and ``single_logit_for_binary`` the output is one logit.
        input_size: Image height and width (linked from the datamodule); fixes the Flatten width.
        arch: torchvision model name, e.g. ``vgg16``, ``vgg19``, ``resnet18``, ``resnet50``, ``mobilenet_v3_small``,
            ``efficientnet_b0``, ``convnext_tiny`` (families: :data:`SUPPORTED_FAMILIES`).
        weights: ``None``/``"none"``, a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``, or
            ``"VGG16_Weights.IMAGENET1K_V1"``), or a path to a state-dict file of the whole torchvision model.
        pooling: How the backbone's feature map enters the head, as Keras' ``pooling`` argument: ``"flatten"`` (the
            slides' Flatten), ``"avg"`` / ``"max"`` (global pooling); ``"auto"`` is flatten for VGG/AlexNet and avg
            otherwise.
        dense_units: Widths of the head's hidden Dense layers (the slides: ``[1024]``; ``[]`` for a linear head).
        dropout: Dropout rate after each hidden Dense layer (the slides: 0.5).
        activation: Activation of the hidden Dense layers (Keras name).
        single_logit_for_binary: With ``num_classes == 2``, output one logit instead of two.

    Raises:
        ValueError: On an unsupported ``arch``, unknown weights name, bad channel count or rate.
        WeightsMismatchError: If a weights file does not fit ``arch``; the message names the mismatched keys.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: tuple[int, int] = (224, 224),
        arch: str = "vgg16",
        weights: Optional[str] = None,
        pooling: Pooling = "auto",
        dense_units: Sequence[int] = (1024,),
        dropout: float = 0.5,
        activation: str = "relu",
        single_logit_for_binary: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}; a classifier needs at least 2 classes.")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels={in_channels}; pretrained torchvision models take 3 (or 1, repeated to 3).")
        if not arch.startswith(SUPPORTED_FAMILIES):
            raise ValueError(
                f"arch={arch!r} is not supported; use a torchvision model of the families {list(SUPPORTED_FAMILIES)}, "
                "e.g. vgg16, resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny."
            )
        if pooling not in ("auto", "flatten", "avg", "max"):
            raise ValueError(f"pooling={pooling!r}; choose 'auto', 'flatten', 'avg' or 'max'.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} is not a dropout rate; use a value in [0, 1).")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.input_size = tuple(input_size)
        self.arch = arch
        self.weights = None if _is_none(weights) else str(weights)
        self.num_outputs = 1 if (num_classes == 2 and single_logit_for_binary) else num_classes

        layers = _cut(arch, self._pretrained_model())
        if in_channels == 1:
            layers = OrderedDict([("to_rgb", _GrayToRGB()), *layers.items()])
        self.backbone = nn.Sequential(layers)

        if pooling == "auto":
            pooling = "flatten" if arch.startswith(("vgg", "alexnet")) else "avg"
        head: OrderedDict[str, nn.Module] = OrderedDict()
        if pooling == "avg":
            head["global_pool"] = nn.AdaptiveAvgPool2d(1)
        elif pooling == "max":
            head["global_pool"] = _GlobalMaxPool()
        head["flatten"] = nn.Flatten()
        width = self._feature_width(pooling != "flatten")
        for i, units in enumerate(dense_units, start=1):
            head[f"dense{i}"] = Dense(width, units, activation)
            if dropout:
                head[f"dense_drop{i}"] = Dropout(dropout)
            width = units
        head["output"] = Dense(width, self.num_outputs, "linear")
        self.head = nn.Sequential(head)

    def _pretrained_model(self) -> nn.Module:
        """The whole torchvision model with the requested weights loaded (its classifier is discarded later)."""
        from torchvision.models import get_model

        model = get_model(self.arch, weights=None)
        if self.weights is None or _SKIP_PRETRAINED.get():
            return model
        if _looks_like_path(self.weights):
            state = load_state_dict_file(self.weights)
            _load_strict(model, state, f"torchvision's {self.arch}", f"weights file {self.weights}")
            return model
        member = _resolve_weights(self.arch, self.weights)
        # torchvision's own loader: reads $TORCH_HOME/hub/checkpoints/<file name of member.url> when it is there
        # (no download, no hash check), else downloads it there and checks the hash. weights_only=True because a
        # cached file is just a file someone put there.
        try:
            state = member.get_state_dict(progress=True, check_hash=True, weights_only=True)
        except OSError as err:  # URLError is an OSError: no network
            cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)
            raise WeightsUnavailableError(
                f"weights={self.weights!r}: {cache} is not there and downloading {member.url} failed ({err}); "
                "offline, copy that file to this path or set weights to a local state-dict file."
            ) from None
        _load_strict(model, state, f"torchvision's {self.arch}", f"cached weights {member}")
        return model

    def _feature_width(self, pooled: bool) -> int:
        """Width of the head's input, found by running the backbone on one zero image of ``input_size``."""
        out = self._probe(torch.zeros(1, self.in_channels, *self.input_size))
        return out.shape[1] if pooled else out[0].numel()

    def _probe(self, x: Tensor) -> Tensor:
        was_training = self.backbone.training
        try:
            with torch.no_grad():
                return self.backbone.eval()(x)
        except RuntimeError as err:
            if not input_too_small(err):
                raise
            raise ValueError(
                f"input_size={self.input_size} is too small for {self.arch} ({err}); use larger images "
                "(data.image_size)."
            ) from None
        finally:
            self.backbone.train(was_training)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
