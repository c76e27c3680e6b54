"""A Keras-style ``model.summary()``: one row per layer, then parameter totals counted the Keras way.

Keras counts BatchNorm's moving mean and variance as (non-trainable) weights; PyTorch keeps them as buffers, so
``sum(p.numel() for p in model.parameters())`` is 440 short on the slides' BatchNorm CNN. Here the totals add
those buffers back, and frozen parameters count as non-trainable, as Keras' ``trainable = False`` does.

Output shapes are channels-first, PyTorch's layout: Keras' ``(None, 28, 28, 32)`` is ``(None, 32, 28, 28)``.

Print it for a config without training: ``python cli.py summary --config configs/<name>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

__all__ = ["KerasSummary", "LayerRow", "keras_summary"]

# PyTorch class name -> Keras layer name, for the "(type)" column (a name Keras shares, such as Dropout, or this
# package's own Conv2D and Dense, stands as it is).
_KERAS_TYPE_NAMES = {
    "Conv2d": "Conv2D",
    "Linear": "Dense",
    "BatchNorm1d": "BatchNormalization",
    "BatchNorm2d": "BatchNormalization",
    "MaxPool2d": "MaxPooling2D",
    "AvgPool2d": "AveragePooling2D",
    "AdaptiveAvgPool2d": "GlobalAveragePooling2D",
}
# Buffers Keras counts as non-trainable weights (BatchNorm's moving statistics).
_COUNTED_BUFFERS = ("running_mean", "running_var")


@dataclass(frozen=True)
class LayerRow:
    name: str
    type_name: str
    output_shape: Optional[tuple]
    trainable_params: int
    non_trainable_params: int

    @property
    def params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    @property
    def trainable(self) -> str:
        if self.params == 0:
            return "-"
        if self.non_trainable_params == 0:
            return "yes"
        return "no" if self.trainable_params == 0 else "partly"


@dataclass(frozen=True)
class KerasSummary:
    """The rows and totals of a summary; ``str()`` gives the printed table."""

    title: str
    rows: list[LayerRow]

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable_params for r in self.rows)

    @property
    def non_trainable_params(self) -> int:
        return sum(r.non_trainable_params for r in self.rows)

    def __str__(self) -> str:
        header = ("Layer (type)", "Output Shape", "Param #", "Trainable")
        cells = [header] + [
            (
                f"{r.name} ({r.type_name})",
                str(r.output_shape) if r.output_shape is not None else "?",
                f"{r.params:,}",
                r.trainable,
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in cells) + 2 for i in range(len(header))]
        rule = "-" * sum(widths)

        def line(row: tuple) -> str:
            return "".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

        lines = [f'Model: "{self.title}"', rule, line(header), "=" * len(rule)]
        lines += [line(row) for row in cells[1:]]
        lines += [
            "=" * len(rule),
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            rule,
        ]
        return "\n".join(lines)


def _is_container(module: nn.Module) -> bool:
    return type(module) in (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _layers(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The rows of the table: children, with plain containers expanded so each Keras layer is one row."""
    rows = []
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if _is_container(child):
            # backbone/head rows go by their layer names (conv1, dense1…); numbered layers keep the container's
            # name (backbone.0, head.0), which keeps them apart.
            named = name in ("backbone", "head") and not any(n.isdigit() for n, _ in child.named_children())
            rows += _layers(child, prefix="" if named else f"{qualified}.")
        else:
            rows.append((qualified, child))
    return rows


def _counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] in _COUNTED_BUFFERS)
    return trainable, frozen


def keras_summary(
    net: nn.Module, input_shape: Optional[tuple[int, ...]] = None, title: Optional[str] = None
) -> KerasSummary:
    """Summarize ``net`` as Keras would; with ``input_shape`` (C, H, W) each row gets its output shape.

    The shape probe runs one forward pass in eval mode on zeros and leaves the module's mode and weights as
    they were.
    """
    layers = _layers(net) or [(type(net).__name__, net)]
    shapes: dict[str, tuple] = {}
    if input_shape is not None:

        def record(name: str):  # a forward hook must return None, or it replaces the layer's output
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                shapes.setdefault(name, (None, *output.shape[1:]))

            return hook

        handles = [module.register_forward_hook(record(name)) for name, module in layers]
        was_training = net.training
        param = next(net.parameters(), None)
        probe = torch.zeros(2, *input_shape, device=param.device if param is not None else None)
        try:
            with torch.no_grad():
                net.eval()(probe)
        finally:
            net.train(was_training)
            for handle in handles:
                handle.remove()
    rows = [
        LayerRow(name, _KERAS_TYPE_NAMES.get(type(m).__name__, type(m).__name__), shapes.get(name), *_counts(m))
        for name, m in layers
    ]
    return KerasSummary(title or type(net).__name__, rows)
