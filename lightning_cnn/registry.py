"""Registries of the package's architectures and datamodules.

Each class registers itself where it is defined (``@ARCHITECTURES.register("lenet")``), so a new architecture or
dataset is one file: the CLI's documentation and every test sweep (construction, CLI round trip, summary,
checkpoint reload) find it without a hand-kept list. ``example`` records the smallest settings that build the
class offline (no download, no pretrained weights), which is what the sweeps use.

No Lightning import here: model files register themselves without depending on Lightning.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["ARCHITECTURES", "DATAMODULES", "Registry"]

T = TypeVar("T", bound=type)


class Registry(Mapping[str, type]):
    """A name → class table that classes add themselves to with :meth:`register`.

    Args:
        kind: What the entries are ("architecture"), for error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type] = {}
        self._examples: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **example: Any) -> Callable[[T], T]:
        """Class decorator: add the class under ``name``; ``example`` holds keyword arguments that build it offline.

        Raises:
            ValueError: If ``name`` is already taken by another class.
        """

        def add(cls: T) -> T:
            taken = self._classes.get(name)
            if taken is not None and taken.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"{self.kind} name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; "
                    f"register {cls.__qualname__} under another name."
                )
            self._classes[name] = cls
            self._examples[name] = dict(example)
            return cls

        return add

    def example(self, name: str) -> dict[str, Any]:
        """The keyword arguments registered with ``name`` (a copy)."""
        self[name]  # an unknown name fails with the registered names
        return dict(self._examples[name])

    def class_path(self, name: str) -> str:
        """The ``class_path`` a YAML names this entry by: through the package that re-exports it
        (``lightning_cnn.models.LeNet``), else its own module (``examples.extending.tiny_vgg.TinyVGG``)."""
        cls = self[name]
        package = cls.__module__.rpartition(".")[0]
        if package and getattr(importlib.import_module(package), cls.__name__, None) is cls:
            return f"{package}.{cls.__name__}"
        return f"{cls.__module__}.{cls.__name__}"

    def __getitem__(self, name: str) -> type:
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(f"no {self.kind} named {name!r}; registered: {', '.join(sorted(self._classes))}.") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._classes)})"


#: Every network class the CLI can train (``model.init_args.net``).
ARCHITECTURES = Registry("architecture")
#: Every datamodule class the CLI can train on (``data``).
DATAMODULES = Registry("datamodule")
