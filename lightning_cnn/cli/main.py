"""``cli.py`` and the ``lightning-cnn`` console script: the arguments' first pass (shipped config names, ``tune``,
the short help), then the CLI, with every user error as one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import torch

from lightning_cnn.cli.arguments import with_shipped_configs
from lightning_cnn.cli.command import CNNCLI
from lightning_cnn.cli.errors import _OUTPUT_ERRNOS, _USER_ERRORS, ConfigError
from lightning_cnn.cli.help import help_request, short_help
from lightning_cnn.cli.yaml_files import use_strict_yaml

__all__ = ["main"]

# How gloo and the TCP store say that the other end of a collective is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")

use_strict_yaml()


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``cli.py`` and the ``lightning-cnn`` console script.

    A bad config value, missing or corrupt data, or unusable weights end the run with one ``error: …`` line
    (exit status 2) instead of a traceback; their messages say what to change.
    """
    # A class_path of the user's own (my_project.MyClassifier) is found in the current folder, as `python cli.py`
    # finds it from the checkout: the console script and cli.py behave the same.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        argv = with_shipped_configs(sys.argv[1:] if args is None else list(args))
        if argv[:1] == ["tune"]:  # a sweep of fit runs, with a parser of its own (lightning_cnn/tune)
            _tune(argv[1:])
            return
        short, argv = help_request(argv)
        if short:
            prog = Path(sys.argv[0]).name if args is None else "cli.py"
            print(short_help(short, prog))
            sys.exit(0)
        if args is None:
            sys.argv[1:] = argv
        else:
            args = argv
        CNNCLI(args=args)
        _leave_process_group()
    except _USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in _OUTPUT_ERRNOS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(
            f"error: cannot write{where}: {err.strerror}; free space or choose another output folder (the logger's "
            "save_dir, or trainer.default_root_dir). Files written before stay as they are.",
            file=sys.stderr,
        )
        sys.exit(2)
    except RuntimeError as err:
        if not _a_peer_stopped(err):
            raise
        # Another process of this DDP run ended first and printed why; this one ends too, without a traceback
        # about the closed connection (the first rank says that much in one line, the others nothing).
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
            print("error: another process of this run stopped first (its error says why); this one stopped too.",
                  file=sys.stderr)  # fmt: skip
        sys.exit(2)


def _a_peer_stopped(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another process of the run went away."""
    network_error = getattr(torch.distributed, "DistNetworkError", ())
    return isinstance(err, network_error) or any(text in str(err) for text in _PEER_GONE)


def _leave_process_group() -> None:
    """Close a finished DDP run's process group while Python is still whole. Left to the interpreter's exit, gloo's
    worker threads can outlive it and abort the process ("terminate called without an active exception", exit -6)
    after a run that succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _tune(argv: list[str]) -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("cli.py tune needs Optuna: pip install 'lightning-cnn[tune]' (or make setup).") from None
    from lightning_cnn.tune.study import main as tune_main

    tune_main(argv)


if __name__ == "__main__":
    main()
