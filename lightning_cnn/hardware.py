"""What adapts to the machine: the memory layout of the network's weights (channels_last on a CPU, with DDP-safe
gradient strides), ``precision: auto`` (bfloat16 where the hardware computes it natively) and a warning when
bfloat16 would be emulated."""

from __future__ import annotations

import functools
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

__all__ = ["auto_precision", "cpu_has_native_bf16", "lay_out", "warn_if_bf16_is_emulated"]

#: The CPU flags (as Linux names them) of the bfloat16 instructions torch's CPU kernels use.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) that torch's CPU kernels use."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_bf16_flags() -> list[str]:
    """Which of the bfloat16 flags the CPU reports (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in _BF16_FLAGS if flag in flags]


def auto_precision(accelerator: Any = "auto") -> tuple[str, str]:
    """What ``trainer.precision: auto`` runs with on this machine, and why (for the start-up line).

    ``bf16-mixed`` on a CUDA device that supports bfloat16 and on a CPU with bfloat16 instructions (AVX512-BF16 or
    AMX), where it is faster at the same accuracy; ``32-true`` elsewhere: a CPU without them emulates bfloat16,
    several times slower than float32, and Apple's MPS and older GPUs keep float32.

    Args:
        accelerator: ``trainer.accelerator`` as configured (``auto``, ``cpu``, ``gpu``, ``cuda``, ``mps``…).
    """
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in ("gpu", "cuda", "cudaaccelerator") or (name == "auto" and torch.cuda.is_available()):
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "this GPU"
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{device} computes in bfloat16"
        return "32-true", f"{device} has no bfloat16 support"
    if name not in ("auto", "cpu", "cpuaccelerator"):
        return "32-true", f"accelerator {name}: bfloat16 is chosen automatically on CUDA devices and CPUs only"
    if cpu_has_native_bf16():
        flags = _cpu_bf16_flags()
        return "bf16-mixed", f"this CPU has bfloat16 instructions ({', '.join(flags) or 'found by oneDNN'})"
    return "32-true", "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): torch would emulate them, slowly"


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
