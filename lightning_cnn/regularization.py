"""Keras-exact weight and activity penalties.

Keras' regularizers (``keras.regularizers.L1/L2/L1L2``) compute ``l1 * sum(|x|) + l2 * sum(x ** 2)`` — note
there is no ½ on the L2 term — and apply it to a layer's kernel, bias or output ("activity"). The activity
penalty is divided by the batch size. Penalties are part of the loss Keras reports in training *and*
evaluation, so its ``val_loss`` includes them; :class:`~lightning_cnn.module.ImageClassifier` does the same.

A layer that can be regularized (:class:`~lightning_cnn.models.layers.Conv2D`,
:class:`~lightning_cnn.models.layers.Dense`) carries a :class:`LayerRegularizers` and exposes ``penalty()``;
:func:`regularization_loss` sums them over a whole network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["L1L2", "LayerRegularizers", "regularization_loss", "resolve_layer_regularizers"]


@dataclass(frozen=True)
class L1L2:
    """``l1 * sum(|x|) + l2 * sum(x²)``, exactly Keras' ``L1L2`` (and ``L1``/``L2`` with one term at zero).

    Args:
        l1: Factor of the sum of absolute values.
        l2: Factor of the sum of squares (no ½: the gradient is ``2 * l2 * x``).
    """

    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"Regularizer {name}={value} is negative; use a factor >= 0 (0 turns it off).")

    def __call__(self, x: Tensor) -> Tensor:
        penalty = x.new_zeros(())
        if self.l1:
            penalty = penalty + self.l1 * x.abs().sum()
        if self.l2:
            penalty = penalty + self.l2 * x.square().sum()
        return penalty

    def __bool__(self) -> bool:
        return bool(self.l1 or self.l2)


@dataclass(frozen=True)
class LayerRegularizers:
    """What one layer is penalized on, Keras' ``kernel_regularizer`` / ``bias_regularizer`` /
    ``activity_regularizer``. A field left ``None`` means "no penalty" (or, in a per-layer override, "keep
    the model-wide default").

    Args:
        kernel: Penalty on the weight tensor.
        bias: Penalty on the bias vector.
        activity: Penalty on the layer's output (after its activation), divided by the batch size.
    """

    kernel: Optional[L1L2] = None
    bias: Optional[L1L2] = None
    activity: Optional[L1L2] = None

    def merged_with(self, override: Optional[LayerRegularizers]) -> LayerRegularizers:
        """The fields ``override`` sets replace this one's; the others stay."""
        if override is None:
            return self
        changes = {f.name: getattr(override, f.name) for f in fields(override) if getattr(override, f.name) is not None}
        return replace(self, **changes)


def resolve_layer_regularizers(
    layer_names: Iterable[str],
    default: Optional[LayerRegularizers],
    per_layer: Optional[Mapping[str, LayerRegularizers]],
) -> dict[str, LayerRegularizers]:
    """Combine a model-wide default with per-layer overrides, rejecting names the model does not have.

    Raises:
        ValueError: If ``per_layer`` names a layer that is not one of ``layer_names``.
    """
    names = list(layer_names)
    per_layer = dict(per_layer or {})
    unknown = sorted(set(per_layer) - set(names))
    if unknown:
        raise ValueError(
            f"layer_regularizers names unknown layer(s) {unknown}; this model's regularizable layers are {names}."
        )
    base = default or LayerRegularizers()
    return {name: base.merged_with(per_layer.get(name)) for name in names}


def regularization_loss(module: nn.Module) -> Tensor:
    """Sum of every penalty in ``module``: kernel and bias penalties of trainable weights, plus the activity
    penalties recorded by the last forward pass.

    Like Keras, a frozen layer's kernel/bias penalty is left out (its weights cannot change, so the term is a
    constant that would only shift the reported loss).
    """
    total: Optional[Tensor] = None
    for layer in module.modules():
        penalty = getattr(layer, "penalty", None)
        if callable(penalty):
            term = penalty()
            if term is not None:
                total = term if total is None else total + term
    if total is None:
        param = next(module.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return total
