"""What the benchmark scripts beside this file share: what they print about the machine they ran on, and how they
start ``cli.py fit`` in a process of its own. No torch import here: benchmarks/keras_parity.py also runs under the
Keras interpreter."""

from __future__ import annotations

import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
