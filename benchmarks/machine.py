"""What the benchmark scripts beside this file share: what they print about the machine they ran on, how they
start ``cli.py fit`` in a process of its own, and the Keras interpreter they compare against. No torch import here:
benchmarks/keras_parity.py and keras_augment_check.py also run under the Keras interpreter."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERAS_REQUIREMENTS = REPO / "benchmarks" / "requirements-keras.txt"


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cli_env() -> dict[str, str]:
    """The environment of a ``cli.py`` process: this folder (for ``gpu_check.Probe``) and the repository on
    ``PYTHONPATH``, Python warnings off (they would bury the figures)."""
    path = [str(REPO / "benchmarks"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)), PYTHONWARNINGS="ignore")


def quiet_fit_args(folder: Path) -> list[str]:
    """``cli.py fit`` flags for a benchmark run in ``folder``: no progress bar, checkpoints or learning-curve plot."""
    return [
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(folder),
        "--checkpoint.save_top_k", "0",
        "--checkpoint.save_last", "false",
        "--plots.learning_curves", "false",
    ]  # fmt: skip


def timing_fit_args(warmup: int, steps: int) -> list[str]:
    """``cli.py fit`` flags for timing ``steps`` training steps after ``warmup``: no validation, logger or test."""
    return [
        "--trainer.max_steps", str(warmup + steps + 1),
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "false",
        "--test_after_fit", "false",
    ]  # fmt: skip


def add_keras_arguments(parser: argparse.ArgumentParser) -> None:
    """``--keras-python`` and ``--keras-venv``: where :func:`keras_python` finds Keras."""
    parser.add_argument("--keras-python", help="an existing interpreter with requirements-keras.txt installed")
    parser.add_argument("--keras-venv", default=str(REPO / ".keras-venv"),
                        help="venv for the Keras side, created from requirements-keras.txt if missing "
                             "(default: .keras-venv in the repository root)")  # fmt: skip


def keras_python(args: argparse.Namespace) -> str:
    """The Keras interpreter: ``--keras-python``, else the venv at ``--keras-venv`` (created if missing)."""
    if args.keras_python:
        if not Path(args.keras_python).is_file():
            sys.exit(f"--keras-python {args.keras_python}: no such file; give a venv's bin/python, or leave it out "
                     "and let the script create one with --keras-venv DIR.")  # fmt: skip
        return args.keras_python
    venv = Path(args.keras_venv)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.is_file():
        print(f"Creating the Keras venv {venv} from {KERAS_REQUIREMENTS.name} (once; about a minute) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(KERAS_REQUIREMENTS)], check=True)
    return str(python)


def keras_env() -> dict[str, str]:
    """The environment of a Keras process: TensorFlow's backend, its C++ log and Python warnings quiet."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", PYTHONWARNINGS="ignore")
