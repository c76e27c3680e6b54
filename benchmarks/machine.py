"""What the benchmark scripts beside this file share: what they say about the machine they ran on, the report
they print and write as Markdown (``--markdown PATH``), how they start ``cli.py fit`` in a process of its own, and
the Keras interpreter they compare against. No torch import here: benchmarks/keras_parity.py and
keras_augment_check.py also run under the Keras interpreter."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
KERAS_REQUIREMENTS = REPO / "benchmarks" / "requirements-keras.txt"
# The /proc/cpuinfo flags of the instructions that give oneDNN fast bfloat16 kernels; without either, torch
# emulates bfloat16 convolutions on a CPU, several times slower than float32.
BF16_FLAGS = {"AVX512-BF16": "avx512_bf16", "AMX": "amx_bf16"}
# What the distributions are called on PyPI, for the versions in a report's header.
SOFTWARE = {"torch": "torch", "Lightning": "pytorch-lightning"}
# A printed line that Markdown would read as a list item or heading ("2. Random draws", "- note"): its marker is
# escaped, so that each line stays a paragraph as printed.
_MARKDOWN_LIST = re.compile(r"^(\d+)?([.#>*+-] )")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> Optional[set[str]]:
    """The CPU's feature flags (Linux), ``None`` where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def bf16_support() -> str:
    """Whether the CPU reports each bfloat16 instruction set: ``"AVX512-BF16 yes, AMX no"`` (``unknown`` where the
    flags cannot be read)."""
    flags = _cpu_flags()
    return ", ".join(
        f"{name} {'unknown' if flags is None else 'yes' if flag in flags else 'no'}"
        for name, flag in BF16_FLAGS.items()
    )


def machine_description(gpu: Optional[str] = None) -> str:
    """The CPU's name, its logical cores, whether it has bfloat16 instructions, and ``gpu`` (the GPU a run used)."""
    return f"{cpu_name()}, {os.cpu_count()} logical cores ({bf16_support()}); GPU: {gpu or 'none used'}"


def software_versions() -> str:
    """Python's version and those of torch and Lightning, read from the installed distributions (no import)."""
    versions = [f"Python {platform.python_version()}"]
    for name, distribution in SOFTWARE.items():
        try:
            versions.append(f"{name} {version(distribution)}")
        except PackageNotFoundError:
            versions.append(f"{name} not installed")
    return ", ".join(versions)


def _load_average() -> Optional[float]:
    """The 1-minute load average (processes running or waiting for a core), ``None`` where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def add_markdown_argument(parser: argparse.ArgumentParser) -> None:
    """``--markdown PATH``: where :meth:`Report.write_markdown` writes the report."""
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the report as a Markdown fragment headed by this command, the date and the "
                             "machine (the docs keep them as docs/results/benchmarks/<script>.md)")  # fmt: skip


class Report:
    """What a benchmark prints as its result, kept so that ``--markdown PATH`` writes it again as a Markdown fragment:
    the command that ran, the date (UTC), the machine and the software, then the printed lines, their tables as
    Markdown tables. Make it when the script starts (its date and wall time start then); :meth:`print` what the
    report holds, and ``print`` the rest (progress, errors).

    Args:
        script: The script's file (``__file__``); the command is written as ``python benchmarks/<its name> ARGS``.
        argv: The script's arguments (default ``sys.argv[1:]``).
    """

    def __init__(self, script: str, argv: Optional[Sequence[str]] = None) -> None:
        arguments = sys.argv[1:] if argv is None else list(argv)
        self.command = shlex.join(["python", f"benchmarks/{Path(script).name}", *arguments])
        self.started = datetime.now(timezone.utc)
        self._clock = time.perf_counter()
        self._load = _load_average()
        self.lines: list[str] = []

    def print(self, text: str = "") -> None:
        """Print ``text`` and keep it for the fragment; lines that start with ``|`` are table rows."""
        print(text, flush=True)
        self.lines += text.split("\n")

    def markdown(self, gpu: Optional[str] = None) -> str:
        """The fragment: a header without a heading (the page that includes it has one), then the kept lines, each
        a paragraph of its own and each run of table rows a table."""
        minutes, seconds = divmod(round(time.perf_counter() - self._clock), 60)
        header = [
            f"<!-- Written by {self.command.split()[1]}: run the command below again rather than edit this file. -->",
            "",
            f"Measured on {self.started:%Y-%m-%d} at {self.started:%H:%M} UTC, in {minutes} min {seconds} s, by:",
            "",
            "```bash",
            self.command,
            "```",
            "",
            f"- **Machine:** {machine_description(gpu)}",
            f"- **Software:** {software_versions()}",
        ]
        if self._load is not None:  # other work on the machine: what moves the figures most
            header.append(
                f"- **Load:** 1-min load average {self._load:.2f} at the start, {_load_average():.2f} at the end, "
                f"on {os.cpu_count()} logical cores"
            )
        blocks: list[list[str]] = []
        in_table = False  # the previous line was a table row: this row belongs to the same table
        for line in (line.strip() for line in self.lines):
            if line.startswith("|") and in_table:
                blocks[-1].append(line)
            elif line:
                blocks.append([_MARKDOWN_LIST.sub(r"\1\\\2", line)])
            in_table = line.startswith("|")
        return "\n\n".join("\n".join(block) for block in [header, *blocks]) + "\n"

    def write_markdown(self, path: Optional[str], gpu: Optional[str] = None) -> None:
        """Write :meth:`markdown` to ``path`` (nothing without a path: ``--markdown`` not given) and say where."""
        if not path:
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.markdown(gpu))
        print(f"Wrote {path}")


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
