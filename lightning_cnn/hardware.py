"""What the module adapts to the machine: the memory layout of the network's weights (channels_last on a CPU, with
DDP-safe gradient strides) and a warning when bfloat16 would be emulated."""

from __future__ import annotations

import functools
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

__all__ = ["cpu_has_native_bf16", "lay_out", "warn_if_bf16_is_emulated"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) that torch's CPU kernels use."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_if_bf16_is_emulated(precision: str, device: torch.device) -> None:
    """Warn (once, rank 0) that a bfloat16 run on a CPU without bfloat16 instructions will be slow."""
    if device.type == "cpu" and precision.startswith("bf16") and not cpu_has_native_bf16():
        rank_zero_warn(
            f"precision {precision} on this CPU: it has no bfloat16 instructions (AVX512-BF16 or AMX), so torch "
            "emulates bfloat16 convolutions, about 10x slower than float32; use precision 32-true here."
        )


def lay_out(net: nn.Module, channels_last: bool) -> list[Any]:
    """Put ``net``'s weights in channels_last (else contiguous) layout; returns the gradient hooks it adds (remove
    them before laying the net out again).

    A weight whose two layouts are the same bytes (one input channel, or a 1x1 kernel) gets a hook that hands its
    gradient over with the weight's own strides: see :func:`_with_strides_of`.
    """
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    hooks = []
    for param in net.parameters():
        if param.dim() == 4 and param.is_contiguous() and param.stride() != _default_strides(param.shape):
            trainable = param.requires_grad
            param.requires_grad_(True)  # a hook needs it; a frozen kernel keeps its hook for when it is unfrozen
            hooks.append(param.register_hook(functools.partial(_with_strides_of, param)))
            param.requires_grad_(trainable)
    return hooks


def _default_strides(shape: torch.Size) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


def _with_strides_of(param: Tensor, grad: Tensor) -> Tensor:
    """``grad`` with ``param``'s strides, without a copy, when the two differ only on size-1 dimensions.

    A kernel with one input channel (or a 1x1 kernel) is the same bytes in NCHW and NHWC, so ops disagree on its
    strides: a convolution's gradient has the parameter's channels_last strides, a regularizer's has NCHW ones.
    Autograd accepts either; DDP compares strides literally and copies every such gradient, with a warning. Both
    are dense and equal on every dimension that counts, so the view below addresses the same elements.
    """
    if grad.stride() != param.stride() and grad.is_contiguous():
        return grad.as_strided(param.shape, param.stride())
    return grad
