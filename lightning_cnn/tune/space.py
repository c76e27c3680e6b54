"""A search file: which config keys a sweep samples, over which ranges, and what it optimizes.

.. code-block:: yaml

    objective: {metric: val/acc, direction: maximize}   # optional: default, the checkpoint's monitor and mode
    params:
      model.init_args.optimizer.init_args.lr: {low: 1.0e-4, high: 1.0e-1, log: true}   # float, log scale
      data.init_args.batch_size: {low: 32, high: 256, log: true}                       # int (both bounds ints)
      model.init_args.net.init_args.dense_dropout: {low: 0.0, high: 0.6, step: 0.1}
      model.init_args.optimizer: {choices: [torch.optim.Adam, torch.optim.SGD]}         # categorical
      model.init_args.optimizer.init_args.momentum:                                    # only when SGD is drawn
        {low: 0.5, high: 0.99, when: {model.init_args.optimizer: torch.optim.SGD}}

Each key is any key of the resolved config (``--print_config``), as it would be given on the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lightning_cnn.cli.errors import ConfigError

__all__ = ["Objective", "Param", "SearchSpace", "SearchFileError"]

_KINDS = ("float", "int", "categorical")
_DIRECTIONS = ("minimize", "maximize")
_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}


class SearchFileError(ConfigError):
    """A search file that cannot be used, with the key and the fix in one line."""


@dataclass(frozen=True)
class Param:
    """One sampled config key.

    Args:
        key: The config key (``model.init_args.optimizer.init_args.lr``).
        kind: ``float``, ``int`` or ``categorical``.
        low: Lower bound (float/int).
        high: Upper bound, included (float/int).
        log: Sample on a log scale.
        step: Sample on a grid of this step from ``low`` (float/int).
        choices: The values of a categorical key (any YAML value: numbers, strings, lists, mappings).
        when: Sample this key only when each named key took one of the given values (a conditional key).
    """

    key: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def applies(self, drawn: dict[str, Any]) -> bool:
        """Whether the key is sampled, given the values ``drawn`` so far."""
        return all(key in drawn and drawn[key] in allowed for key, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """The value of this key for an Optuna ``trial``."""
        if self.kind == "categorical":
            encoded = self._encoded_choices()
            value = trial.suggest_categorical(self.key, encoded)
            return self.choices[encoded.index(value)]
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Every value of this key, for the grid sampler (categorical, int, or float with a step)."""
        if self.kind == "categorical":
            return self._encoded_choices()
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise SearchFileError(
                f"params.{self.key}: the grid sampler needs a finite set of values; give it a step or choices."
            )
        count = int(round((self.high - self.low) / self.step)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def _encoded_choices(self) -> list:
        # Optuna stores categorical choices as None/bool/int/float/str: lists and mappings travel as JSON.
        return [json.dumps(c) if isinstance(c, (list, dict)) else c for c in self.choices]

    def corners(self) -> list:
        """Values that together exercise every kind of value this key can take (checked before a study starts)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


@dataclass(frozen=True)
class Objective:
    """What a trial is scored by: the best value of ``metric`` over its epochs. ``None``: the checkpoint's."""

    metric: Optional[str] = None
    direction: Optional[str] = None


@dataclass(frozen=True)
class SearchSpace:
    """The parsed search file.

    Args:
        params: The sampled keys, in the order they are drawn (a key's conditions before it).
        objective: The metric and direction.
        path: The file it was read from.
    """

    params: tuple[Param, ...]
    objective: Objective = Objective()
    path: Optional[Path] = None

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Read and check a search file.

        Raises:
            SearchFileError: A missing file, bad YAML, or a bad range, naming the key and the fix.
        """
        path = Path(path)
        if not path.is_file():
            raise SearchFileError(f"search file {path} does not exist; give a YAML file (configs/search/*.yaml).")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SearchFileError(f"search file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        try:
            return cls.from_dict(raw, path)
        except SearchFileError as err:
            raise SearchFileError(f"search file {path}: {err}") from None

    @classmethod
    def from_dict(cls, raw: Any, path: Optional[Path] = None) -> SearchSpace:
        if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
            raise SearchFileError("no params; give `params:` with at least one config key and its range.")
        unknown = set(raw) - {"params", "objective"}
        if unknown:
            raise SearchFileError(f"unknown section {sorted(unknown)}; a search file has `params` and `objective`.")
        params = [_param(key, spec) for key, spec in raw["params"].items()]
        return cls(_in_draw_order(params), _objective(raw.get("objective") or {}), path)

    def draw(self, trial: Any) -> dict[str, Any]:
        """The config values of one trial: every key whose conditions hold."""
        drawn: dict[str, Any] = {}
        for param in self.params:
            if param.applies(drawn):
                drawn[param.key] = param.suggest(trial)
        return drawn

    def grid(self) -> dict[str, list]:
        """The grid sampler's search space (conditional keys are not allowed on a grid)."""
        conditional = [p.key for p in self.params if p.when]
        if conditional:
            raise SearchFileError(
                f"params.{conditional[0]}: the grid sampler cannot skip conditional keys; remove `when` or use "
                "--sampler tpe."
            )
        return {p.key: p.grid() for p in self.params}


def _param(key: Any, spec: Any) -> Param:
    if not isinstance(key, str) or not key or " " in key:
        raise SearchFileError(
            f"params: {key!r} is not a config key; write it as on the command line (data.init_args.batch_size)."
        )
    if not isinstance(spec, dict):
        raise SearchFileError(f"params.{key}: {spec!r} is not a range; give {{low: …, high: …}} or {{choices: […]}}.")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise SearchFileError(f"params.{key}: unknown field {sorted(unknown)}; use {sorted(_PARAM_KEYS)}.")
    kind = spec.get("type") or _kind(spec)
    if kind not in _KINDS:
        raise SearchFileError(f"params.{key}: type {kind!r}; choose one of {list(_KINDS)}.")
    when = _when(key, spec.get("when") or {})
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchFileError(f"params.{key}: choices {choices!r} is empty or not a list; give at least one value.")
        return Param(key, kind, choices=tuple(choices), when=when)
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SearchFileError(f"params.{key}: {name} {value!r} is not a number; give {name}: <number>.")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SearchFileError(f"params.{key}: an int range needs whole bounds, got {low}..{high}.")
    if not low < high:
        raise SearchFileError(f"params.{key}: empty range low={low}, high={high}; give low < high.")
    if log and low <= 0:
        raise SearchFileError(f"params.{key}: a log range needs low > 0, got {low}.")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SearchFileError(f"params.{key}: step {step!r}; give a positive number.")
    if step is not None and log:
        raise SearchFileError(f"params.{key}: step and log together; Optuna samples one or the other, drop one.")
    return Param(key, kind, float(low), float(high), log, None if step is None else float(step), when=when)


def _kind(spec: dict) -> str:
    if "choices" in spec:
        return "categorical"
    bounds = (spec.get("low"), spec.get("high"), spec.get("step", 1))
    return "int" if all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) else "float"


def _when(key: str, when: Any) -> dict[str, tuple]:
    if not isinstance(when, dict):
        raise SearchFileError(f"params.{key}: when {when!r}; give {{other.key: value}} or {{other.key: [values]}}.")
    return {other: tuple(v if isinstance(v, list) else [v]) for other, v in when.items()}


def _in_draw_order(params: list[Param]) -> tuple[Param, ...]:
    """The file's order, moved so that every key comes after the keys its `when` names, and a class_path key
    (``model.init_args.optimizer``) before the keys under it (the command line sets the class first)."""
    by_key = {p.key: p for p in params}
    for param in params:
        for other in param.when:
            if other not in by_key:
                raise SearchFileError(
                    f"params.{param.key}: when names {other!r}, which is not searched; add it to params."
                )
    ordered: list[Param] = []
    visiting: set[str] = set()

    def place(param: Param) -> None:
        if param in ordered:
            return
        if param.key in visiting:
            raise SearchFileError(f"params.{param.key}: its `when` conditions form a cycle; one key must come first.")
        visiting.add(param.key)
        before = [by_key[k] for k in param.when] + [p for p in params if param.key.startswith(p.key + ".")]
        for other in before:
            place(other)
        ordered.append(param)

    for param in params:
        place(param)
    return tuple(ordered)


def _objective(raw: Any) -> Objective:
    if not isinstance(raw, dict) or set(raw) - {"metric", "direction"}:
        raise SearchFileError(f"objective {raw!r}; give {{metric: val/acc, direction: maximize}} (both optional).")
    direction = raw.get("direction")
    if direction is not None and direction not in _DIRECTIONS:
        raise SearchFileError(f"objective.direction {direction!r}; choose one of {list(_DIRECTIONS)}.")
    return Objective(raw.get("metric"), direction)
