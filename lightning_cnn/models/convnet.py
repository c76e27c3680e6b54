"""The slides' CNNs: one builder (:class:`ConvNet`) and three presets of it, their layer settings in :data:`PRESETS`.

Every CNN in the course has the same shape — conv blocks ``Conv2D → [BatchNorm] → [Dropout] → Pooling``, then
``Flatten → Dense … → Dense(num_classes)`` — so the variants differ only by their layer table:

======================  ============================================  ==================================
preset                  conv blocks, each followed by MaxPool 2       dense part
======================  ============================================  ==================================
:class:`LeNet`          Conv 4 k5, Conv 12 k5 (valid)                 Dense 300 → Dense 10
:class:`FunctionalCNN`  Conv 32 k4, Conv 16 k4 (valid), input 64×64   Dense 10 → Dense 1 (binary)
:class:`BatchNormCNN`   Conv 32/60/128 k5 (same) + BN + Dropout 0.25  Dense 100 → Dropout 0.5 → Dense 10
======================  ============================================  ==================================

A preset takes every :class:`ConvNet` argument by keyword, with its table entry as the defaults, so its signature
(and ``--print_config``) shows the preset's own values and a YAML may override any of them.

The last Dense outputs logits (no softmax/sigmoid): the classifier's loss applies it, which is the
numerically stable form of Keras' ``softmax`` + ``categorical_crossentropy``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeVar, Union, get_type_hints

import torch
from torch import Tensor, nn

from lightning_cnn.models.layers import (
    POOLING,
    Conv2D,
    Dense,
    Dropout,
    Padding,
    PoolType,
    input_too_small,
    keras_init_,
    make_activation,
    make_pooling,
)
from lightning_cnn.models.layers import batch_norm as make_batch_norm  # `batch_norm` is also an argument name
from lightning_cnn.registry import ARCHITECTURES
from lightning_cnn.regularization import LayerRegularizers, resolve_layer_regularizers

__all__ = ["PRESETS", "BatchNormCNN", "ConvNet", "FunctionalCNN", "LeNet"]

#: Keras ``GlobalMaxPooling2D`` / ``GlobalAveragePooling2D`` by ``global_pool``.
GLOBAL_POOLING: dict[str, type[nn.Module]] = {"max": nn.AdaptiveMaxPool2d, "avg": nn.AdaptiveAvgPool2d}

FloatOrList = Union[float, Sequence[float]]
IntOrList = Union[int, Sequence[int]]


def _per_layer(value: Union[float, int, Sequence], count: int, name: str) -> list:
    """Broadcast a scalar to ``count`` layers, or check that a list has one value per layer."""
    if isinstance(value, (int, float)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(
            f"{name}={values} has {len(values)} values but the model has {count} such layers; give one value or {count}."
        )
    return values


def _check_rate(rate: float, name: str) -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name}={rate} is not a dropout rate; use a value in [0, 1).")
    return rate


@ARCHITECTURES.register("convnet")
class ConvNet(nn.Module):
    """A Keras-style sequential CNN: conv blocks, then dense layers, then the output layer.

    The network is ``backbone`` (the conv blocks: what fine-tuning freezes) followed by ``head`` (Flatten and the
    dense layers). Layers are named ``conv1, bn1, [act1,] drop1, pool1, …, [global_pool,] flatten, [head_drop,]
    dense1, dense_drop1, …, output``; the weighted ones' names are the keys of ``layer_regularizers``.

    Args:
        in_channels: Image channels (linked from the datamodule by the CLI).
        num_classes: Number of classes; with 2 and ``single_logit_for_binary`` the output is one logit
            (Keras' ``Dense(1, activation="sigmoid")``), trained with binary cross-entropy.
        input_size: Image height and width (linked from the datamodule); fixes the Flatten width.
        filters: Output channels of each conv layer.
        kernel_size: Kernel side, one for all conv layers or one per layer.
        stride: Conv stride (Keras ``strides``), one for all conv layers or one per layer.
        padding: ``"valid"`` or ``"same"``, as Keras (``"same"`` gives ``ceil(n / stride)`` outputs).
        pool_type: Pooling after each conv block: ``"max"`` (Keras ``MaxPooling2D``) or ``"avg"``
            (``AveragePooling2D``); both with Keras' ``padding="valid"``.
        pool_size: Pooling window after each conv block, one for all or one per block (0 for none, so
            ``[2, 0, 2, 0]`` stacks two convs per pooling, as VGG does).
        pool_stride: Pooling stride; ``None`` is ``pool_size``, as Keras' ``strides=None``.
        global_pool: ``None`` flattens the last feature map (Keras ``Flatten``); ``"avg"`` or ``"max"`` pool it
            to one value per channel instead (``GlobalAveragePooling2D`` / ``GlobalMaxPooling2D``), which makes the
            head independent of the input size.
        head_dropout: Dropout rate on the features entering the head (after Flatten or global pooling).
        dense_units: Widths of the hidden dense layers.
        activation: Activation of conv and hidden dense layers (Keras name).
        batch_norm: Add BatchNorm after each conv layer.
        batch_norm_before_activation: Put BatchNorm between the convolution and its activation (Keras
            ``Conv2D(activation=None) → BatchNormalization → Activation``) instead of after the activation, the
            slides' order.
        conv_dropout: Dropout rate after each conv block (one for all, or one per block; 0 for none).
        dense_dropout: Dropout rate after each hidden dense layer (one for all, or one per layer; 0 for none).
        regularizers: Model-wide default penalties for every conv and dense layer.
        layer_regularizers: Per-layer overrides by layer name, e.g. ``{"conv1": {"kernel": {"l2": 1e-4}}}``.
        single_logit_for_binary: With ``num_classes == 2``, output one logit instead of two.
        keras_init: Initialize like Keras (glorot_uniform kernels, zero biases) instead of torch's defaults.
        keras_batchnorm: Use Keras' BatchNorm momentum (0.99, i.e. torch 0.01) and epsilon (1e-3).

    Raises:
        ValueError: On a list option whose length does not match the layers, a bad rate, stride or pooling type,
            or an input too small for the conv/pool stack.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: tuple[int, int] = (28, 28),
        *,  # the layer settings by keyword only: a new one cannot shift the others
        filters: Sequence[int] = (32, 64),
        kernel_size: IntOrList = 3,
        stride: IntOrList = 1,
        padding: Padding = "valid",
        pool_type: PoolType = "max",
        pool_size: IntOrList = 2,
        pool_stride: Optional[int] = None,
        global_pool: Optional[PoolType] = None,
        head_dropout: float = 0.0,
        dense_units: Sequence[int] = (128,),
        activation: str = "relu",
        batch_norm: bool = False,
        batch_norm_before_activation: bool = False,
        conv_dropout: FloatOrList = 0.0,
        dense_dropout: FloatOrList = 0.0,
        regularizers: Optional[LayerRegularizers] = None,
        layer_regularizers: Optional[dict[str, LayerRegularizers]] = None,
        single_logit_for_binary: bool = True,
        keras_init: bool = False,
        keras_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}; a classifier needs at least 2 classes.")
        for name, value in (("pool_type", pool_type), ("global_pool", global_pool)):
            if value not in POOLING and not (name == "global_pool" and value is None):
                raise ValueError(
                    f"{name}={value!r} is not a pooling type; choose one of {sorted(POOLING)} "
                    "(Keras MaxPooling2D / AveragePooling2D)"
                    + (", or null to flatten." if name == "global_pool" else ".")
                )
        if pool_stride is not None and pool_stride < 1:
            raise ValueError(f"pool_stride={pool_stride}; use a stride of at least 1, or null for pool_size.")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.input_size = tuple(input_size)
        self.num_outputs = 1 if (num_classes == 2 and single_logit_for_binary) else num_classes

        filters = list(filters)
        dense_units = list(dense_units)
        kernel_sizes = _per_layer(kernel_size, len(filters), "kernel_size")
        strides = _per_layer(stride, len(filters), "stride")
        pool_sizes = _per_layer(pool_size, len(filters), "pool_size")
        conv_rates = [_check_rate(r, "conv_dropout") for r in _per_layer(conv_dropout, len(filters), "conv_dropout")]
        dense_rates = [
            _check_rate(r, "dense_dropout") for r in _per_layer(dense_dropout, len(dense_units), "dense_dropout")
        ]

        weighted = [f"conv{i + 1}" for i in range(len(filters))] + [f"dense{i + 1}" for i in range(len(dense_units))]
        regs = resolve_layer_regularizers([*weighted, "output"], regularizers, layer_regularizers)

        backbone: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        bn_first = batch_norm and batch_norm_before_activation
        layers = zip(filters, kernel_sizes, strides, pool_sizes, conv_rates)
        for i, (width, k, s, pool, rate) in enumerate(layers, start=1):
            backbone[f"conv{i}"] = Conv2D(
                in_channels=channels,
                filters=width,
                kernel_size=k,
                stride=s,
                padding=padding,
                activation="linear" if bn_first else activation,
                regularizers=regs[f"conv{i}"],
            )
            if batch_norm:
                backbone[f"bn{i}"] = make_batch_norm(num_features=width, keras_batchnorm=keras_batchnorm)
            if bn_first:
                backbone[f"act{i}"] = make_activation(activation)
            if rate:
                backbone[f"drop{i}"] = Dropout(p=rate)
            if pool:
                backbone[f"pool{i}"] = make_pooling(pool_type=pool_type, pool_size=pool, stride=pool_stride or pool)
            channels = width
        self.backbone = nn.Sequential(backbone)

        head: OrderedDict[str, nn.Module] = OrderedDict()
        if global_pool is None:
            flat = self._flat_features()
        else:
            self._flat_features()  # checks that the input survives the conv/pool stack
            head["global_pool"] = GLOBAL_POOLING[global_pool](1)
            flat = channels
        head["flatten"] = nn.Flatten()
        if _check_rate(head_dropout, "head_dropout"):
            head["head_drop"] = Dropout(p=head_dropout)
        for i, (units, rate) in enumerate(zip(dense_units, dense_rates), start=1):
            head[f"dense{i}"] = Dense(
                in_features=flat, units=units, activation=activation, regularizers=regs[f"dense{i}"]
            )
            if rate:
                head[f"dense_drop{i}"] = Dropout(p=rate)
            flat = units
        head["output"] = Dense(
            in_features=flat, units=self.num_outputs, activation="linear", regularizers=regs["output"]
        )
        self.head = nn.Sequential(head)

        if keras_init:
            keras_init_(self)

    def _flat_features(self) -> int:
        """Width of the Flatten output, found by running the conv part on an empty batch of the input size."""
        with torch.no_grad():
            probe = torch.zeros(1, self.in_channels, *self.input_size)
            try:
                out = self.backbone.eval()(probe)
            except RuntimeError as err:
                if not input_too_small(err):
                    raise
                raise ValueError(
                    f"input_size={self.input_size} is too small for this conv/pool stack ({err}); "
                    "use larger images (data.image_size) or fewer/smaller layers."
                ) from None
            finally:
                self.backbone.train()
        if out.numel() == 0:
            raise ValueError(
                f"input_size={self.input_size} shrinks to nothing in this conv/pool stack; "
                "use larger images (data.image_size), 'same' padding or fewer layers."
            )
        return out[0].numel()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


#: The slides' layer settings by registered name (as torchvision's VGG ``cfgs``): each preset's defaults where they
#: differ from, or are worth stating next to, :class:`ConvNet`'s.
PRESETS: dict[str, dict[str, Any]] = {
    "lenet": {"filters": (4, 12), "kernel_size": 5, "padding": "valid", "pool_size": 2, "dense_units": (300,)},
    "functional_cnn": {
        "num_classes": 2,
        "input_size": (64, 64),
        "filters": (32, 16),
        "kernel_size": 4,
        "padding": "valid",
        "pool_size": 2,
        "dense_units": (10,),
    },
    "batchnorm_cnn": {
        "filters": (32, 60, 128),
        "kernel_size": 5,
        "padding": "same",
        "pool_size": 2,
        "dense_units": (100,),
        "batch_norm": True,
        # The slides do not show the rates; these are the common Keras-example choices.
        "conv_dropout": 0.25,
        "dense_dropout": 0.5,
    },
}

_Net = TypeVar("_Net", bound=ConvNet)


def _preset_signature(settings: Mapping[str, Any]) -> inspect.Signature:
    """ConvNet's constructor signature, every argument keyword-only, with ``settings`` as defaults.

    The annotations are resolved to types here (this module postpones them), so a reader of the signature such as
    jsonargparse needs no source to evaluate them.

    Raises:
        TypeError: If ``settings`` names an argument ConvNet does not have.
    """
    signature = inspect.signature(ConvNet.__init__)
    unknown = sorted(set(settings) - set(signature.parameters))
    if unknown:
        raise TypeError(f"preset settings {unknown} are not ConvNet arguments; use names from ConvNet's signature.")
    hints = get_type_hints(ConvNet.__init__)
    self_param, *params = signature.parameters.values()
    return signature.replace(
        parameters=[
            self_param,
            *(
                p.replace(
                    kind=inspect.Parameter.KEYWORD_ONLY,
                    default=settings.get(p.name, p.default),
                    annotation=hints[p.name],
                )
                for p in params
            ),
        ],
        return_annotation=None,
    )


def _preset(name: str) -> Callable[[type[_Net]], type[_Net]]:
    """Class decorator: the class's constructor is ConvNet's with ``PRESETS[name]`` as defaults.

    The constructor forwards every argument by keyword, and its ``__signature__`` shows the preset's defaults, so
    ``inspect.signature``, jsonargparse and ``--print_config`` list them. A subclass of a preset that defines its own
    ``__init__(..., **kwargs)`` and calls ``super().__init__(**kwargs)`` inherits all of this. (Typing the arguments
    out per preset would repeat ConvNet's twenty, which is how the presets and ConvNet used to drift apart.)
    """
    settings = dict(PRESETS[name])  # a snapshot: the signature and the constructor cannot disagree later
    signature = _preset_signature(settings)

    def decorate(cls: type[_Net]) -> type[_Net]:
        def __init__(self: _Net, **kwargs: Any) -> None:
            super(cls, self).__init__(**{**settings, **kwargs})

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        __init__.__module__ = cls.__module__
        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return decorate


@ARCHITECTURES.register("lenet")
@_preset("lenet")
class LeNet(ConvNet):
    """The slides' "LeNet simples" (Sequential API): 62,226 parameters on 1×28×28.

    ``Conv(4, 5×5, valid) → MaxPool 2 → Conv(12, 5×5, valid) → MaxPool 2 → Flatten → Dense 300 → Dense 10``.
    The slides put ``l2(1e-4)`` on both conv kernels; the shipped configs set that through ``layer_regularizers``.
    Arguments as :class:`ConvNet` (keyword only), with ``PRESETS["lenet"]`` as defaults.
    """


@ARCHITECTURES.register("functional_cnn")
@_preset("functional_cnn")
class FunctionalCNN(ConvNet):
    """The slides' functional-API CNN: 35,813 parameters on 1×64×64 with one sigmoid output.

    ``Input 64×64×1 → Conv 32 k4 → MaxPool 2 → Conv 16 k4 → MaxPool 2 → Flatten → Dense 10 → Dense 1``.
    A binary classifier: pair it with a two-class datamodule (``data.classes: [a, b]``, ``image_size: 64``).
    Arguments as :class:`ConvNet` (keyword only), with ``PRESETS["functional_cnn"]`` as defaults.
    """


@ARCHITECTURES.register("batchnorm_cnn")
@_preset("batchnorm_cnn")
class BatchNormCNN(ConvNet):
    """The slides' BatchNorm/Dropout CNN (their ``model.summary()`` table): 358,210 Keras parameters, of which 440
    are BatchNorm's non-trainable moving statistics.

    ``3 × [Conv(32/60/128, 5×5, same) → BatchNorm → Dropout → MaxPool 2] → Flatten (1152) → Dense 100 → Dropout →
    Dense 10``. Arguments as :class:`ConvNet` (keyword only), with ``PRESETS["batchnorm_cnn"]`` as defaults.
    """
