"""The slides' CNNs: one builder (:class:`ConvNet`) and three thin variants with the slides' settings.

Every CNN in the course has the same shape — conv blocks ``Conv2D → [BatchNorm] → [Dropout] → MaxPool``, then
``Flatten → Dense … → Dense(num_classes)`` — so the variants differ only by their layer table:

==================  =========================================  =====================================
variant             conv part                                  dense part
==================  =========================================  =====================================
:class:`LeNet`      Conv 4 k5 valid, Conv 12 k5 valid           Dense 300 → Dense 10
:class:`FunctionalCNN`  Conv 32 k4, Conv 16 k4 (input 64×64)    Dense 10 → Dense 1 (binary)
:class:`BatchNormCNN`   Conv 32/60/128 k5 same + BN + Dropout   Dense 100 → Dropout → Dense 10
==================  =========================================  =====================================

The last Dense outputs logits (no softmax/sigmoid): the classifier's loss applies it, which is the
numerically stable form of Keras' ``softmax`` + ``categorical_crossentropy``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor, nn

from lightning_cnn.models.layers import Conv2D, Dense, Dropout, Padding, input_too_small, keras_init_
from lightning_cnn.models.layers import batch_norm as make_batch_norm  # `batch_norm` is also an argument name
from lightning_cnn.registry import ARCHITECTURES
from lightning_cnn.regularization import LayerRegularizers, resolve_layer_regularizers

__all__ = ["BatchNormCNN", "ConvNet", "FunctionalCNN", "LeNet"]

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
    dense layers). Layers are named ``conv1, bn1, drop1, pool1, …, flatten, dense1, dense_drop1, …, output``;
    these names are the keys of ``layer_regularizers``.

    Args:
        in_channels: Image channels (linked from the datamodule by the CLI).
        num_classes: Number of classes; with 2 and ``single_logit_for_binary`` the output is one logit
            (Keras' ``Dense(1, activation="sigmoid")``), trained with binary cross-entropy.
        input_size: Image height and width (linked from the datamodule); fixes the Flatten width.
        filters: Output channels of each conv layer.
        kernel_size: Kernel side, one for all conv layers or one per layer.
        padding: ``"valid"`` or ``"same"``, as Keras.
        pool_size: MaxPool window and stride after each conv block (0 for none).
        dense_units: Widths of the hidden dense layers.
        activation: Activation of conv and hidden dense layers (Keras name).
        batch_norm: Add BatchNorm after each conv layer.
        conv_dropout: Dropout rate after each conv block (one for all, or one per block; 0 for none).
        dense_dropout: Dropout rate after each hidden dense layer (one for all, or one per layer; 0 for none).
        regularizers: Model-wide default penalties for every conv and dense layer.
        layer_regularizers: Per-layer overrides by layer name, e.g. ``{"conv1": {"kernel": {"l2": 1e-4}}}``.
        single_logit_for_binary: With ``num_classes == 2``, output one logit instead of two.
        keras_init: Initialize like Keras (glorot_uniform kernels, zero biases) instead of torch's defaults.
        keras_batchnorm: Use Keras' BatchNorm momentum (0.99, i.e. torch 0.01) and epsilon (1e-3).

    Raises:
        ValueError: On a list option whose length does not match the layers, a bad rate, or an input too small
            for the conv/pool stack.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: tuple[int, int] = (28, 28),
        filters: Sequence[int] = (32, 64),
        kernel_size: IntOrList = 3,
        padding: Padding = "valid",
        pool_size: int = 2,
        dense_units: Sequence[int] = (128,),
        activation: str = "relu",
        batch_norm: bool = False,
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
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.input_size = tuple(input_size)
        self.num_outputs = 1 if (num_classes == 2 and single_logit_for_binary) else num_classes

        filters = list(filters)
        dense_units = list(dense_units)
        kernel_sizes = _per_layer(kernel_size, len(filters), "kernel_size")
        conv_rates = [_check_rate(r, "conv_dropout") for r in _per_layer(conv_dropout, len(filters), "conv_dropout")]
        dense_rates = [
            _check_rate(r, "dense_dropout") for r in _per_layer(dense_dropout, len(dense_units), "dense_dropout")
        ]

        weighted = [f"conv{i + 1}" for i in range(len(filters))] + [f"dense{i + 1}" for i in range(len(dense_units))]
        regs = resolve_layer_regularizers([*weighted, "output"], regularizers, layer_regularizers)

        backbone: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, (width, k, rate) in enumerate(zip(filters, kernel_sizes, conv_rates), start=1):
            backbone[f"conv{i}"] = Conv2D(channels, width, k, padding, activation, regs[f"conv{i}"])
            if batch_norm:
                backbone[f"bn{i}"] = make_batch_norm(width, keras_batchnorm)
            if rate:
                backbone[f"drop{i}"] = Dropout(rate)
            if pool_size:
                backbone[f"pool{i}"] = nn.MaxPool2d(pool_size)
            channels = width
        self.backbone = nn.Sequential(backbone)

        flat = self._flat_features()
        head: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for i, (units, rate) in enumerate(zip(dense_units, dense_rates), start=1):
            head[f"dense{i}"] = Dense(flat, units, activation, regs[f"dense{i}"])
            if rate:
                head[f"dense_drop{i}"] = Dropout(rate)
            flat = units
        head["output"] = Dense(flat, self.num_outputs, "linear", regs["output"])
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


@ARCHITECTURES.register("lenet")
class LeNet(ConvNet):
    """The slides' "LeNet simples" (Sequential API): 62,226 parameters on 1×28×28.

    ``Conv(4, 5×5, valid) → MaxPool 2 → Conv(12, 5×5, valid) → MaxPool 2 → Flatten → Dense 300 → Dense 10``.
    The slides put ``l2(1e-4)`` on both conv kernels; the shipped configs set that through ``layer_regularizers``.
    Arguments as :class:`ConvNet`, with the slides' values as defaults.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: tuple[int, int] = (28, 28),
        filters: Sequence[int] = (4, 12),
        kernel_size: IntOrList = 5,
        dense_units: Sequence[int] = (300,),
        activation: str = "relu",
        batch_norm: bool = False,
        conv_dropout: FloatOrList = 0.0,
        dense_dropout: FloatOrList = 0.0,
        regularizers: Optional[LayerRegularizers] = None,
        layer_regularizers: Optional[dict[str, LayerRegularizers]] = None,
        keras_init: bool = False,
        keras_batchnorm: bool = False,
    ) -> None:
        super().__init__(
            in_channels, num_classes, input_size, filters, kernel_size, "valid", 2, dense_units, activation,
            batch_norm, conv_dropout, dense_dropout, regularizers, layer_regularizers, True, keras_init,
            keras_batchnorm,
        )  # fmt: skip


@ARCHITECTURES.register("functional_cnn")
class FunctionalCNN(ConvNet):
    """The slides' functional-API CNN: 35,813 parameters on 1×64×64 with one sigmoid output.

    ``Input 64×64×1 → Conv 32 k4 → MaxPool 2 → Conv 16 k4 → MaxPool 2 → Flatten → Dense 10 → Dense 1``.
    A binary classifier: pair it with a two-class datamodule (``data.classes: [a, b]``, ``image_size: 64``).
    Arguments as :class:`ConvNet`, with the slides' values as defaults.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        input_size: tuple[int, int] = (64, 64),
        filters: Sequence[int] = (32, 16),
        kernel_size: IntOrList = 4,
        dense_units: Sequence[int] = (10,),
        activation: str = "relu",
        batch_norm: bool = False,
        conv_dropout: FloatOrList = 0.0,
        dense_dropout: FloatOrList = 0.0,
        regularizers: Optional[LayerRegularizers] = None,
        layer_regularizers: Optional[dict[str, LayerRegularizers]] = None,
        keras_init: bool = False,
        keras_batchnorm: bool = False,
    ) -> None:
        super().__init__(
            in_channels, num_classes, input_size, filters, kernel_size, "valid", 2, dense_units, activation,
            batch_norm, conv_dropout, dense_dropout, regularizers, layer_regularizers, True, keras_init,
            keras_batchnorm,
        )  # fmt: skip


@ARCHITECTURES.register("batchnorm_cnn")
class BatchNormCNN(ConvNet):
    """The slides' BatchNorm/Dropout CNN (their ``model.summary()`` table): 358,210 Keras parameters, of which 440
    are BatchNorm's non-trainable moving statistics.

    ``3 × [Conv(32/60/128, 5×5, same) → BatchNorm → Dropout → MaxPool 2] → Flatten (1152) → Dense 100 → Dropout →
    Dense 10``. The slides do not show the dropout rates; 0.25 after conv blocks and 0.5 after the dense layer are
    the common Keras-example choices. Arguments as :class:`ConvNet`, with the slides' values as defaults.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: tuple[int, int] = (28, 28),
        filters: Sequence[int] = (32, 60, 128),
        kernel_size: IntOrList = 5,
        dense_units: Sequence[int] = (100,),
        activation: str = "relu",
        batch_norm: bool = True,
        conv_dropout: FloatOrList = 0.25,
        dense_dropout: FloatOrList = 0.5,
        regularizers: Optional[LayerRegularizers] = None,
        layer_regularizers: Optional[dict[str, LayerRegularizers]] = None,
        keras_init: bool = False,
        keras_batchnorm: bool = False,
    ) -> None:
        super().__init__(
            in_channels, num_classes, input_size, filters, kernel_size, "same", 2, dense_units, activation,
            batch_norm, conv_dropout, dense_dropout, regularizers, layer_regularizers, True, keras_init,
            keras_batchnorm,
        )  # fmt: skip
