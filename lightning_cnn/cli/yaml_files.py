"""How the command line reads YAML: jsonargparse's own reading, plus two refusals that name the file.

- A key written twice in one mapping is refused, naming the key and both lines (YAML readers keep the last one
  silently, so the first value would be ignored without a word).
- A syntax error names the file, the line and the column, in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import yaml
from jsonargparse import get_loader, set_loader

__all__ = ["use_strict_yaml"]


class DuplicateKeyError(yaml.YAMLError):
    """A mapping with the same key twice."""


def use_strict_yaml() -> None:
    """Make every YAML read by jsonargparse (config files and ``--key value`` values) go through
    :func:`_strict_load` (once per process)."""
    current = get_loader("yaml")
    if getattr(current, "strict", False):
        return
    set_loader("yaml", _strict_loader(current), exceptions=(yaml.YAMLError,))


def _strict_loader(load: Callable[[str], Any]) -> Callable[..., Any]:
    def strict_load(stream: str, path: Optional[str] = None) -> Any:
        where = f"{path}: " if path else ""
        try:
            _refuse_duplicate_keys(yaml.compose(stream, Loader=yaml.SafeLoader))
            return load(stream)
        except DuplicateKeyError as err:
            raise DuplicateKeyError(f"{where}{err}") from None
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            context = f" ({err.context})" if err.context else ""
            raise yaml.YAMLError(f"{where}{at}{err.problem}{context}; fix the YAML syntax there.") from None

    strict_load.strict = True  # type: ignore[attr-defined]
    return strict_load


def _refuse_duplicate_keys(node: Optional[yaml.Node]) -> None:
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in first_line:
                    raise DuplicateKeyError(
                        f"key {key.value!r} is written twice (lines {first_line[key.value]} and "
                        f"{key.start_mark.line + 1}); keep one."
                    )
                first_line[key.value] = key.start_mark.line + 1
            _refuse_duplicate_keys(value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item)
