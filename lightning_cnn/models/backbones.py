"""Pretrained torchvision classifiers as a ``backbone`` + a new ``head``: Keras' ``include_top=False`` fine-tuning.

The slides' fine-tuning recipe is ``VGG16(weights="imagenet", include_top=False)`` followed by a new classifier
(``Flatten → Dense 1024 relu → Dropout 0.5 → Dense N``). :class:`TorchvisionNet` does that for any supported
torchvision classification model: the convolutional part becomes ``backbone`` (what
:class:`~lightning_cnn.callbacks.FreezeBackbone` freezes) and the classifier is rebuilt for ``num_classes``.

``weights`` (random, a torchvision weights name, or a local state-dict file) are resolved and loaded by
:mod:`lightning_cnn.models.weights`, whose names are also importable from here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from lightning_cnn.models.layers import Dense, Dropout, input_too_small
from lightning_cnn.models.weights import (
    WeightsMismatchError,
    WeightsUnavailableError,
    load_backbone_weights,
    load_pretrained,
    load_state_dict_file,
    random_init,
    skip_pretrained_weights,
    weights_name_for,
    weights_preprocessing,
)
from lightning_cnn.registry import ARCHITECTURES

__all__ = [
    "SUPPORTED_FAMILIES",
    "TorchvisionNet",
    # Re-exported from lightning_cnn.models.weights, where they live, for the importers of this module.
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

Pooling = Literal["auto", "flatten", "avg", "max"]


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
        self.weights = None if random_init(weights) else str(weights)
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
            head[f"dense{i}"] = Dense(in_features=width, units=units, activation=activation)
            if dropout:
                head[f"dense_drop{i}"] = Dropout(p=dropout)
            width = units
        head["output"] = Dense(in_features=width, units=self.num_outputs, activation="linear")
        self.head = nn.Sequential(head)

    def _pretrained_model(self) -> nn.Module:
        """The whole torchvision model with the requested weights loaded (its classifier is discarded later)."""
        from torchvision.models import get_model

        model = get_model(self.arch, weights=None)
        if self.weights is not None:
            load_pretrained(model, self.arch, self.weights)
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
