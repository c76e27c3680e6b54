"""Errors a user can act on, each reported as one ``error: …`` line: the CLI's own (:class:`ConfigError`), the
ones other modules raise with the fix in their message, and jsonargparse's reports condensed to the key at fault.
"""

from __future__ import annotations

import errno
import re
import sys
from typing import NoReturn, Optional, TextIO

from pytorch_lightning.cli import LightningArgumentParser

from lightning_cnn.checkpoints import (
    CheckpointError,
)
from lightning_cnn.data import CorruptDataError, DataNotFoundError
from lightning_cnn.export import ExportError
from lightning_cnn.models.backbones import (
    WeightsMismatchError,
    WeightsUnavailableError,
)
from lightning_cnn.module import NonFiniteLossError
from lightning_cnn.module_checks import TrainingSetupError

__all__ = ["ConfigError"]

_NET_CONTRACT = (
    "model.init_args.net takes an nn.Module class, not a builder function such as torchvision.models.resnet18; "
    "the CLI passes it num_classes, in_channels and input_size where its __init__ takes them. For a torchvision "
    "model use lightning_cnn.models.TorchvisionNet with init_args: {arch: resnet18}."
)


class _ConciseParser(LightningArgumentParser):
    """On a bad option or YAML key, print a one-line usage instead of the hundred-line option list, so the error
    naming the bad key is what a user sees (``--help`` still lists every option)."""

    def print_usage(self, file: Optional[TextIO] = None) -> None:
        print(f"usage: {self.prog} --config CONFIG [--section.key VALUE ...]", file=file or sys.stderr)

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        # jsonargparse cannot link the data's sizes into a net given as a builder function (it fails with an
        # internal TypeError); say what `net:` takes instead.
        if ("linked_targets" in message and 'Parser key "net"' in message) or _NET_CONTRACT in message:
            message = _NET_CONTRACT
        elif self.exit_on_error:  # the report printed to the user (nested parsers raise theirs to it)
            message = _condensed_union_report(message)
        super().error(message, ex)


# Structure lines of jsonargparse's report on a nested class value that failed ("Does not validate against any of
# the Union subtypes"), around the one line that says what is wrong.
_REPORT_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")


def _condensed_union_report(message: str) -> str:
    """jsonargparse's multi-line report on a bad nested value as one line: the key (``model.init_args.net``), the
    class and the innermost reason (``Option 'filterz' is not accepted``). Other messages are returned as they are."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    keys, owner, reason, depth = [], None, None, -1
    for line in message.splitlines():
        text = line.strip()
        key, cls = _PARSER_KEY.search(text), _CLASS_PATH.search(text)
        if key:
            keys.append(key.group(1))
        elif cls:
            owner = cls.group(1)
        elif text and not text.startswith(_REPORT_NOISE):
            indent = len(line) - len(line.lstrip())
            if indent > depth:  # the deepest reason is the one about the innermost value
                reason, depth = text.lstrip("- "), indent
    if not keys or reason is None:
        return message
    where = ".init_args.".join(keys) + (f" ({owner})" if owner else "")
    return f"{where}: {reason}; see the accepted options with --help."


class ConfigError(ValueError):
    """A config value that a model, datamodule or callback constructor rejected."""


# Errors whose message already names the bad value and the fix: the command line prints just that line.
_USER_ERRORS = (
    ConfigError,
    NonFiniteLossError,
    TrainingSetupError,
    ExportError,
    CheckpointError,
    DataNotFoundError,
    CorruptDataError,
    WeightsMismatchError,
    WeightsUnavailableError,
)


# Writing failures that are about the output folder, not a bug: read-only, no permission, disk or quota full.
_OUTPUT_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def _user_error_in_chain(err: BaseException) -> Optional[BaseException]:
    """The first error in ``err``'s chain whose message already names the problem and the fix (jsonargparse wraps
    such errors, raised by a constructor, in a report of every Union subtype it tried)."""
    current, seen = err.__cause__ or err.__context__, 0
    while current is not None and seen < 32:
        if isinstance(current, _USER_ERRORS) and not isinstance(current, ConfigError):
            return current
        current, seen = current.__cause__ or current.__context__, seen + 1
    return None


def _innermost_value_error(err: BaseException) -> str:
    """The message of the deepest ValueError in ``err``'s chain: jsonargparse wraps the constructor's own error
    (which names the value and the fix) in a "does not validate against any of the Union subtypes" report."""
    message, current = str(err), err
    while current is not None:
        if isinstance(current, ValueError):
            message = str(current)
        current = current.__cause__ or current.__context__
    return message
