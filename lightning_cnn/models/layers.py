"""Keras-shaped building blocks: a convolution or dense layer fused with its activation and regularizers.

Keras' ``Conv2D(..., activation="relu", kernel_regularizer=...)`` is one layer: weights, activation and
penalties together, and its activity penalty sees the *activated* output. These blocks keep that unit so a
model reads like the slides and the summary shows one row per Keras layer.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cnn.regularization import LayerRegularizers

__all__ = [
    "ACTIVATIONS",
    "KERAS_BN_EPS",
    "KERAS_BN_MOMENTUM",
    "Conv2D",
    "Dense",
    "Dropout",
    "POOLING",
    "Padding",
    "PoolType",
    "batch_norm",
    "input_too_small",
    "keras_init_",
    "keras_same_padding",
    "make_activation",
    "make_pooling",
]

Padding = Literal["valid", "same"]
PoolType = Literal["max", "avg"]

# Keras BatchNormalization(momentum=0.99, epsilon=1e-3) updates moving = 0.99*moving + 0.01*batch;
# torch's momentum is the weight of the *new* value, so Keras' 0.99 is torch's 0.01.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3

# What torch says when a feature map has become smaller than a kernel or pooling window.
_TOO_SMALL_MESSAGES = ("Kernel size can't be greater than actual input size", "Output size is too small")


def input_too_small(err: RuntimeError) -> bool:
    """Whether ``err`` is torch's complaint that an image became smaller than a kernel or pooling window (so a
    shape probe can say "use larger images"); other errors are not about the input size and must surface as
    they are."""
    return any(message in str(err) for message in _TOO_SMALL_MESSAGES)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "selu": nn.SELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "linear": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Build an activation from its Keras name.

    Raises:
        ValueError: If ``name`` is not a known activation.
    """
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.") from None


#: Keras pooling layer name (``MaxPooling2D``, ``AveragePooling2D``) by ``pool_type``. Both pool with Keras'
#: ``padding="valid"``: no padding, and an incomplete last window is dropped (torch's ``ceil_mode=False``), so
#: AvgPool2d's ``count_include_pad`` never comes into play.
POOLING: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def make_pooling(pool_type: str, pool_size: int, stride: int) -> nn.Module:
    """Build Keras' ``MaxPooling2D``/``AveragePooling2D(pool_size, strides=stride, padding="valid")``.

    Raises:
        ValueError: If ``pool_type`` is not a key of :data:`POOLING`.
    """
    try:
        pool = POOLING[pool_type]
    except KeyError:
        raise ValueError(f"Unknown pool_type {pool_type!r}; choose one of {sorted(POOLING)}.") from None
    return pool(kernel_size=pool_size, stride=stride)


def batch_norm(num_features: int, keras_batchnorm: bool) -> nn.BatchNorm2d:
    """BatchNorm2d with torch defaults, or with Keras' momentum/epsilon when ``keras_batchnorm``."""
    if keras_batchnorm:
        return nn.BatchNorm2d(num_features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
    return nn.BatchNorm2d(num_features)


def keras_init_(module: nn.Module) -> None:
    """Keras' initializers in place: glorot_uniform kernels and zero biases on every conv/linear layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class _Regularized(nn.Module):
    """A weighted layer followed by an activation, carrying Keras-style penalties.

    ``penalty()`` returns the kernel and bias penalties (of trainable weights only, as Keras) plus the
    activity penalty of the most recent forward pass.
    """

    layer: nn.Conv2d | nn.Linear

    def __init__(self, activation: str, regularizers: Optional[LayerRegularizers]) -> None:
        super().__init__()
        self.activation = make_activation(activation)
        self.regularizers = regularizers or LayerRegularizers()
        self._activity_penalty: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(self.layer(x))
        activity = self.regularizers.activity
        if activity:  # (no attribute write otherwise: nn.Module.__setattr__ is slow enough to see on a CPU step)
            # Keras divides the activity penalty by the batch size (the output's first dimension).
            self._activity_penalty = activity(out) / out.shape[0]
        return out

    def penalty(self) -> Optional[Tensor]:
        terms = []
        kernel, bias = self.regularizers.kernel, self.regularizers.bias
        if kernel and self.layer.weight.requires_grad:
            terms.append(kernel(self.layer.weight))
        if bias and self.layer.bias is not None and self.layer.bias.requires_grad:
            terms.append(bias(self.layer.bias))
        if self._activity_penalty is not None:
            terms.append(self._activity_penalty)
        return sum(terms) if terms else None


def keras_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding before and after one spatial side for Keras' ``padding="same"``: the output has
    ``ceil(size / stride)`` positions and an odd total puts the extra pixel after (bottom/right), as TensorFlow."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _StridedSameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with Keras' ``"same"`` padding at a stride above 1, which torch's ``padding="same"`` refuses:
    the padding depends on the input's size, so it is worked out on each call."""

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = keras_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = keras_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class Conv2D(_Regularized):
    """Keras ``Conv2D``: a 2-D convolution, its activation and its regularizers.

    Args:
        in_channels: Input channels.
        filters: Output channels.
        kernel_size: Square kernel side.
        stride: Step of the kernel in both directions (Keras ``strides``).
        padding: ``"valid"`` (no padding: ``floor((n - kernel) / stride) + 1`` outputs) or ``"same"`` (Keras':
            ``ceil(n / stride)`` outputs, the odd padding pixel at the bottom/right).
        activation: Keras activation name (``"linear"`` for none).
        regularizers: Kernel/bias/activity penalties of this layer.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: Padding = "valid",
        activation: str = "relu",
        regularizers: Optional[LayerRegularizers] = None,
    ) -> None:
        super().__init__(activation, regularizers)
        if padding not in ("valid", "same"):
            raise ValueError(f"Unknown padding {padding!r}; choose 'valid' or 'same'.")
        if stride < 1:
            raise ValueError(f"stride={stride}; use a stride of at least 1.")
        if padding == "same" and stride > 1:
            self.layer = _StridedSameConv2d(in_channels, filters, kernel_size, stride=stride)
        else:  # torch's "same" at stride 1 pads like Keras (an even kernel's extra pixel at the bottom/right)
            self.layer = nn.Conv2d(in_channels, filters, kernel_size, stride=stride, padding=padding)


class Dense(_Regularized):
    """Keras ``Dense``: a linear layer, its activation and its regularizers.

    Args:
        in_features: Input width.
        units: Output width.
        activation: Keras activation name (``"linear"`` for none, as on a logits layer).
        regularizers: Kernel/bias/activity penalties of this layer.
    """

    def __init__(
        self,
        in_features: int,
        units: int,
        activation: str = "relu",
        regularizers: Optional[LayerRegularizers] = None,
    ) -> None:
        super().__init__(activation, regularizers)
        self.layer = nn.Linear(in_features, units)


# A CPU dropout mask costs one random draw per element in torch (``bernoulli_``): a quarter of the BatchNorm CNN's
# training step on two cores (profiled; benchmarks/speed_options.py measures the gain). Dropout below draws 64
# random bits per four elements.
_LANE = 1 << 16  # each element gets 16 random bits


class _LaneDropout(torch.autograd.Function):
    """Dropout with a mask from 16-bit lanes of random int64 words; the mask is saved for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, drop_lanes: int) -> Tensor:
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits random
        mask = torch.empty_like(x)  # x's layout (channels_last stays channels_last)
        lanes = words.view(torch.int16)[: x.numel()].as_strided(mask.shape, mask.stride())
        torch.ge(lanes, drop_lanes - _LANE // 2, out=mask)  # 1 where kept: P = 1 - drop_lanes / 65536
        # Inverted dropout: kept elements are scaled so that the expected output equals the input. In float32 the
        # scale goes into the mask; a bfloat16/float16 mask could not hold it exactly, so there it is a second step.
        scale: Optional[float] = _LANE / (_LANE - drop_lanes)
        if mask.dtype in (torch.float32, torch.float64):
            mask.mul_(scale)
            scale = None
        ctx.scale = scale
        ctx.save_for_backward(mask)
        return _LaneDropout._apply(x, mask, ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (mask,) = ctx.saved_tensors
        return _LaneDropout._apply(grad, mask, ctx.scale), None

    @staticmethod
    def _apply(x: Tensor, mask: Tensor, scale: Optional[float]) -> Tensor:
        out = x * mask
        return out if scale is None else out.mul_(scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a faster mask when training on the CPU (elsewhere it is ``nn.Dropout``).

    Each element's keep/drop decision comes from 16 random bits instead of a Bernoulli draw per element, 2-3x
    faster on a CPU. So the rate is ``p`` rounded to a multiple of 1/65536 (exact for 0.25 and 0.5; off by at most
    7.6e-6 otherwise), and kept elements are scaled by ``1 / (1 - rounded p)``: the expected output equals the input
    exactly, as with ``nn.Dropout``. The draws come from torch's CPU generator, so ``seed_everything`` fixes them.
    """

    def forward(self, x: Tensor) -> Tensor:
        drop_lanes = round(self.p * _LANE)
        if not self.training or x.device.type != "cpu" or self.inplace or not 0 < drop_lanes < _LANE:
            return super().forward(x)
        return _LaneDropout.apply(x, drop_lanes)
