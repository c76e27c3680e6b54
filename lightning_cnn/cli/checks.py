"""Checks of a parsed config that need the built model, data and trainer, mixed into
:class:`~lightning_cnn.cli.command.CNNCLI`: a typed value for a key the CLI links from the data, a net from outside
the package that cannot take the data's images, a global batch that does not split over the processes. Each
fails with one line before training starts."""

from __future__ import annotations

from typing import Any

import torch

from lightning_cnn.cli.arguments import _plain, _typed_values
from lightning_cnn.cli.errors import ConfigError

__all__ = ["ConfigChecks"]

# What the CLI fills in from the datamodule, so it is never typed twice (and a typed value must agree with it). The
# classifier would read num_classes and the input shape from a net of this package; linking them also serves a
# net from elsewhere that does not carry them (any nn.Module class).
_LINKS: dict[str, Any] = {
    "model.init_args.num_classes": lambda dm: dm.num_classes,
    "model.init_args.input_shape": lambda dm: dm.dims,
    "model.init_args.net.init_args.num_classes": lambda dm: dm.num_classes,
    "model.init_args.net.init_args.in_channels": lambda dm: dm.dims[0],
    "model.init_args.net.init_args.input_size": lambda dm: dm.dims[1:],
    "model.init_args.preprocessing": lambda dm: dm.preprocessing.to_dict(),
}


class ConfigChecks:
    """The checks; the CLI calls them once its classes are built (``model``, ``datamodule``, ``trainer``,
    ``_argv``: the CLI's own attributes)."""

    model: Any
    datamodule: Any
    trainer: Any
    _argv: list[str]

    def _check_typed_links(self) -> None:
        """A value typed for a linked key (``--model.init_args.net.init_args.in_channels 1``, or the same key in a
        YAML) that disagrees with the data would be silently replaced: refuse it, naming both."""
        datamodule = self.datamodule
        if datamodule is None or not hasattr(datamodule, "dims"):
            return
        typed = _typed_values(self._argv, list(_LINKS))
        for key, value in typed.items():
            actual = _LINKS[key](datamodule)
            if _plain(value) != _plain(actual):
                raise ConfigError(
                    f"{key}={value!r} disagrees with the data ({type(datamodule).__name__} gives {_plain(actual)!r}); "
                    "leave it out: the CLI links it from the datamodule."
                )

    def _check_net_takes_data(self) -> None:
        """A net from outside the package (any nn.Module class) is not checked when it is built: run it once on
        an input of the data's size, so a net that cannot take the images, or gives the wrong number of outputs,
        fails here with one line rather than as a traceback in the first step."""
        net, datamodule = getattr(self.model, "net", None), self.datamodule
        if net is None or type(net).__module__.startswith("lightning_cnn.") or not hasattr(datamodule, "dims"):
            return
        name, shape = type(net).__name__, "×".join(map(str, datamodule.dims))
        was_training = net.training
        try:
            with torch.no_grad():
                out = net.eval()(torch.zeros(2, *datamodule.dims))
        except RuntimeError as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"model.init_args.net ({name}) cannot take the data's {shape} images ({first_line}); choose a net "
                "for this size and channel count, or change data.init_args.image_size."
            ) from None
        finally:
            net.train(was_training)
        if not isinstance(out, torch.Tensor) or out.shape != (2, datamodule.num_classes):
            got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"model.init_args.net ({name}) gives outputs of shape {got} per image, but the data has "
                f"{datamodule.num_classes} classes; the net must return one logit per class (its num_classes)."
            )

    def _check_batch_splits(self) -> None:
        """A global batch that does not split over the processes fails now, before any process starts or any file
        is written (the datamodule would only find out when its first loader is built)."""
        split = getattr(self.datamodule, "per_process_batch_size", None)
        if split is None:
            return
        processes = self.trainer.num_nodes * self.trainer.num_devices
        try:
            split(processes)
        except ValueError as err:
            raise ConfigError(str(err)) from None
