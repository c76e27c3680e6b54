"""What ``cli.py tune`` checks before a study starts: the fit config the arguments resolve to (built by nothing),
the objective, and every searched key at its corner values."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.tune.space import SearchFileError, SearchSpace

__all__ = ["check_params", "cli_value", "objective_of", "resolved_fit_config"]


def resolved_fit_config(fit_args: list[str]) -> Any:
    """The fit config these arguments resolve to, without building anything.

    Raises:
        ConfigError: The parser's one-line error.
    """
    from lightning_cnn.cli.command import CNNCLI

    class _ParseOnly(CNNCLI):
        def _add_instantiators(self) -> None: ...
        def before_instantiate_classes(self) -> None: ...
        def instantiate_classes(self) -> None: ...
        def after_instantiate_classes(self) -> None: ...
        def _run_subcommand(self, subcommand: str) -> None: ...

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            cli = _ParseOnly(args=["fit", *fit_args])
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        message = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        raise ConfigError(message.removeprefix("error:").strip()) from None
    return cli.config["fit"]


def objective_of(space: SearchSpace, base: Any) -> tuple[str, str]:
    metric = space.objective.metric or base.checkpoint.monitor
    direction = space.objective.direction
    if direction is None:
        if space.objective.metric and space.objective.metric != base.checkpoint.monitor:
            raise SearchFileError(
                f"objective.metric {metric!r} has no direction; add direction: maximize (or minimize)."
            )
        direction = "maximize" if base.checkpoint.mode == "max" else "minimize"
    return metric, direction


def check_params(space: SearchSpace, fit_args: list[str]) -> None:
    """Parse the config with each key at each of its corner values (and its conditions met), so a key the config
    does not have, or a value it does not take, stops the sweep before any trial, with one line."""
    for param in space.params:
        conditions = [f"--{key}={cli_value(values[0])}" for key, values in param.when.items()]
        for value in param.corners():
            try:
                resolved_fit_config([*fit_args, *conditions, f"--{param.key}={cli_value(value)}"])
            except ConfigError as err:
                raise SearchFileError(f"search file {space.path}: params.{param.key} = {value!r}: {err}") from None


def cli_value(value: Any) -> str:
    """A value as the command line takes it: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)
