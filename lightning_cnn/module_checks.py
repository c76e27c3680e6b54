"""The checks and small conversions behind :class:`~lightning_cnn.module.ImageClassifier`'s arguments: a choice
among named values, a value that must agree with what the net carries, hyperparameters a checkpoint can hold as
plain data, and an optimizer or scheduler that torch refuses, each as one line naming the key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

from torch import nn

__all__ = ["TrainingSetupError", "as_list", "built", "choice", "divergence_message", "from_net", "plain_data"]


class TrainingSetupError(ValueError):
    """A setting training cannot start with, found once the trainer runs: an optimizer argument torch refuses, or
    callbacks that cannot work together. Its message names the setting and the fix."""


def built(key: str, factory: Callable[[Any], Any], argument: Any) -> Any:
    """``factory(argument)``, with torch's own refusal of an argument ("Invalid learning rate: -1.0") as one line
    that names the config key."""
    try:
        return factory(argument)
    except ValueError as err:
        raise TrainingSetupError(
            f"model.init_args.{key}: {err}; change that value in the config or on the command line."
        ) from None


def plain_data(value: Any) -> bool:
    """Whether a hyperparameter is plain data (a config), which a checkpoint can hold without pickling code."""
    if isinstance(value, dict):
        return all(plain_data(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(plain_data(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def choice(name: str, value: str, allowed: Any) -> str:
    """``value`` if it is one of the ``Literal`` ``allowed``.

    Raises:
        ValueError: Naming the value and the allowed ones.
    """
    if value not in get_args(allowed):
        raise ValueError(f"{name}={value!r}; choose one of {list(get_args(allowed))}.")
    return value


def from_net(net: nn.Module, name: str, given: Any, carried: Any) -> Any:
    """``given`` if set, else what the net carries; the two must agree when both are known.

    Raises:
        ValueError: If ``given`` disagrees with the net.
    """
    if given is not None and carried is not None and as_list(given) != as_list(carried):
        raise ValueError(
            f"{name}={given!r} disagrees with the net's {carried!r} ({type(net).__name__}); leave {name} out: it is "
            "read from the net."
        )
    return given if given is not None else carried


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def divergence_message(record: list[float], epoch: int, kept: str) -> str:
    """The one line that ends a diverged run: ``record`` is (first non-finite step or -1 on another process, its
    loss, data loss and penalty); ``kept``, the newest checkpoint written before it, if any."""
    step, loss, data_loss, penalty = record
    where = (
        f"at step {int(step)} (data loss {data_loss:.4g}, penalty {penalty:.4g})" if step >= 0 else "on another process"
    )
    kept_text = f"; the checkpoints written before it are kept ({kept})" if kept else ""
    return (
        f"training stopped: the loss became {loss if step >= 0 else 'non-finite'} in epoch {epoch} {where}; the "
        f"weights diverged: lower the learning rate (optimizer.init_args.lr) or check the data{kept_text}."
    )
