"""The lessons' outputs and figures, made again by running each lesson's commands as its page shows them.

    python scripts/lessons.py                  # every lesson: docs/lessons/output/*.txt, docs/lessons/figures/*.png
    python scripts/lessons.py --lessons 1 3    # only these lessons
    python scripts/lessons.py --quick --lessons 1 --out /tmp/lessons-check   # every fit cut to a few batches

Each command runs in a process of its own, in a scratch folder that links to the checkout's ``cli.py`` and
``configs/`` (as the docs tests do), so its runs land in that folder's ``runs/`` and the paths it prints are the
ones a reader sees (``runs/<experiment>/version_0/...``). The scratch folder is deleted at the end, unless
``--runs-dir`` names it (a new or empty folder, so every run is ``version_0``). The data is the real Fashion-MNIST,
read from Debian's ``dataset-fashion-mnist`` package as ``make quickstart`` does. Files a lesson page writes with
``<!-- docs-test: file NAME -->`` are written into the scratch folder first, as the docs tests write them.

Each command's output goes to ``output/<name>.txt``: the line ``$ <command>``, then what it printed (stdout and
stderr, in order), each line cut to the text after its last carriage return, terminal escapes removed, trailing
spaces stripped, and the absolute paths of the checkout and the scratch folder made relative. Output longer than
:data:`LONG_OUTPUT` lines is shortened: progress-bar lines (a run with ``--progress.mode bar`` prints one per update
into a pipe) are dropped except each epoch's last one; the model summary, the messages and the test tables stay.
Each cut is marked with a line ``[… N lines …]``. A plain ``fit`` into a pipe prints one line per epoch and is
kept whole.
The figures the runs write are copied to ``figures/<name>.png``.

About 13 minutes on 2 CPU cores shared with other work (LeNet's fit 35 s, the functional CNN's 40 s, the BatchNorm
CNN's 95 s, the transfer runs 9 minutes); ``--quick`` (the smoke trainer on every fit, into ``--out``) about 20 s
per command.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "docs" / "lessons"
DEFAULT_OUT = PAGES
#: What a scratch folder links to, so commands name them as a reader in the checkout does.
CHECKOUT_LINKS = ("cli.py", "configs")
QUICK_TRAINER = "configs/trainer/smoke.yaml"
#: Output longer than this (in lines, after carriage returns are resolved) is shortened.
LONG_OUTPUT = 200

PRETRAIN = "python cli.py fit --config configs/transfer/pretrain_fashion_0to4.yaml"
SOURCE_CKPT = "runs/pretrain_fashion_0to4/version_0/checkpoints/last.ckpt"


@dataclass(frozen=True)
class Step:
    """One command of a lesson: its output file's name and the figures it leaves in the scratch folder.

    ``name`` None: a command another lesson shows and runs too, run here only for the files it leaves.
    """

    name: str | None
    command: str
    figures: dict[str, str] = field(default_factory=dict)  # path in the scratch folder -> figure name


def _curves(run: str, name: str) -> dict[str, str]:
    """A fit's learning curves and confusion matrix, as figures ``<name>-learning-curves`` and so on."""
    return {
        f"runs/{run}/version_0/learning_curves.png": f"{name}-learning-curves",
        f"runs/{run}/version_0/confusion_matrix.png": f"{name}-confusion-matrix",
    }


LESSONS: dict[int, tuple[Step, ...]] = {
    1: (
        Step("1-lenet-summary", "python cli.py summary --config configs/lenet_fashion_mnist.yaml"),
        Step(
            "1-lenet-fit",
            "python cli.py fit --config configs/lenet_fashion_mnist.yaml",
            _curves("lenet_fashion_mnist", "1-lenet"),
        ),
    ),
    2: (
        Step(
            "2-functional-cnn-fit",
            "python cli.py fit --config configs/functional_cnn_binary.yaml",
            _curves("functional_cnn_binary", "2-functional-cnn"),
        ),
        Step(
            "2-functional-cnn-summary-same-avg",
            "python cli.py summary --config configs/functional_cnn_binary.yaml "
            "--model.init_args.net.init_args.padding same --model.init_args.net.init_args.pool_type avg",
        ),
    ),
    3: (
        Step(
            "3-bn-cnn-fit",
            "python cli.py fit --config configs/bn_cnn_fashion_mnist.yaml",
            _curves("bn_cnn_fashion_mnist", "3-bn-cnn"),
        ),
    ),
    4: (
        Step(
            "4-preview",
            "python cli.py preview --config configs/augment_lenet_fashion_mnist.yaml",
            {"runs/preview/augment_lenet_fashion_mnist.png": "4-preview"},
        ),
        Step(
            "4-preview-batched",
            "python cli.py preview --config configs/augment_lenet_fashion_mnist.yaml "
            "--config configs/augmentation/batched.yaml --out runs/preview/batched.png",
            {"runs/preview/batched.png": "4-preview-batched"},
        ),
        Step(
            "4-preview-pipeline",
            "python cli.py preview --config configs/augment_lenet_fashion_mnist.yaml --config my_pipeline.yaml "
            "--out runs/preview/my_pipeline.png",
            {"runs/preview/my_pipeline.png": "4-preview-pipeline"},
        ),
    ),
    5: (
        Step("5-pretrain", PRETRAIN),
        Step(
            "5-finetune",
            "python cli.py fit --config configs/transfer/finetune_fashion_5to9.yaml "
            f"--trainer.callbacks.init_args.backbone_weights {SOURCE_CKPT}",
            _curves("finetune_fashion_5to9", "5-finetune"),
        ),
    ),
    6: (
        Step(None, PRETRAIN),
        Step(
            "6-full-monitored",
            "python cli.py fit --config configs/transfer/finetune_full_fashion_5to9.yaml "
            f"--trainer.callbacks.init_args.backbone_weights {SOURCE_CKPT} "
            "--trainer.callbacks+=configs/callbacks/source_monitor_fashion_0to4.yaml "
            f"--trainer.callbacks.init_args.checkpoint {SOURCE_CKPT}",
            {"runs/finetune_full_fashion_5to9/version_0/learning_curves.png": "6-full-learning-curves"},
        ),
    ),
}
#: Each lesson's page: its file blocks are written into the scratch folder before its commands run.
PAGE_FILES = {
    1: "1-lenet.md",
    2: "2-functional-cnn.md",
    3: "3-regularization.md",
    4: "4-augmentation.md",
    5: "5-transfer-learning.md",
    6: "6-forgetting.md",
}

_FILE_BLOCK = re.compile(
    r"^<!-- docs-test: file (?P<name>\S+) -->\n(?P<indent>[ \t]*)```[^\n]*\n(?P<body>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A tqdm bar as Lightning draws it: "Epoch 3:  45%|████▌     | 190/422 [00:09<00:11, 20.1it/s, v_num=0, ...]".
_BAR = re.compile(
    r"^(?P<label>Sanity Checking|Training|Validation|Testing|Predicting|Epoch \d+)[^|\n]*\|[^|\n]*\| *"
    r"(?P<n>\d+)/(?P<total>[\d?]+) \[[^\[\]\n]*\]"
)


def page_files(page: Path) -> dict[str, str]:
    """The blocks of ``page`` marked ``<!-- docs-test: file NAME -->``, by name, dedented."""
    files = {}
    for match in _FILE_BLOCK.finditer(page.read_text()):
        indent = len(match["indent"])
        files[match["name"]] = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
    return files


def terminal_lines(text: str) -> list[str]:
    """``text`` as a terminal leaves each line: the text after its last carriage return, without escapes; a
    progress bar with a message printed right after it becomes two lines."""
    lines = []
    for raw in text.split("\n"):
        line = _ESCAPE.sub("", raw.split("\r")[-1]).rstrip()
        bar = _BAR.match(line)
        if bar and line[bar.end() :].strip():
            lines += [line[: bar.end()], line[bar.end() :].strip()]
        else:
            lines.append(line)
    return lines


def shorten(lines: list[str]) -> list[str]:
    """Progress bars dropped but each epoch's last line, cuts marked; unchanged when not over :data:`LONG_OUTPUT`."""
    if len(lines) <= LONG_OUTPUT:
        return lines
    matches = [_BAR.match(line) for line in lines]
    bars = [match is not None for match in matches]
    # Each epoch's last full bar (the bar is reset to 0 under the old label before the next epoch starts).
    last_of_epoch = {
        m["label"]: i for i, m in enumerate(matches) if m and m["label"].startswith("Epoch") and m["n"] == m["total"]
    }
    kept_bars = set(last_of_epoch.values())
    keep = [not bar or i in kept_bars for i, bar in enumerate(bars)]
    dropped_bar = [bar and not kept for bar, kept in zip(bars, keep)]
    for i, line in enumerate(lines):  # a blank line beside a dropped bar goes with it
        if not line and (dropped_bar[i - 1 : i] == [True] or dropped_bar[i + 1 : i + 2] == [True]):
            keep[i] = False
    out: list[str] = []
    cut = 0
    for line, kept in zip(lines, keep):
        if kept:
            if cut:
                out.append(f"[… {cut} line{'s' if cut > 1 else ''} …]")
                cut = 0
            out.append(line)
        else:
            cut += 1
    if cut:
        out.append(f"[… {cut} line{'s' if cut > 1 else ''} …]")
    return out


def run_step(step: Step, scratch: Path, quick: bool) -> tuple[str, float]:
    """Run ``step`` in ``scratch``; returns the output file's text and the seconds it took."""
    words = shlex.split(step.command)
    if quick and words[2] == "fit":
        words += ["--trainer", QUICK_TRAINER]
    shown = shlex.join(words)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *words[1:]], cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"`{shown}` failed (exit {result.returncode}):\n{result.stdout[-4000:]}")
    text = result.stdout.replace(f"{scratch}/", "").replace(f"{REPO}/", "")
    return "\n".join([f"$ {shown}", *shorten(terminal_lines(text))]).rstrip() + "\n", seconds


def run_lessons(lessons: list[int], out: Path, scratch: Path, quick: bool) -> None:
    """Run the lessons' commands in ``scratch``; write their outputs and figures under ``out``."""
    for link in CHECKOUT_LINKS:
        (scratch / link).symlink_to(REPO / link)
    (out / "output").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    for lesson in lessons:
        for name, text in page_files(PAGES / PAGE_FILES[lesson]).items():
            (scratch / name).write_text(text)
        for step in LESSONS[lesson]:
            if step.name is None and step.command in done:
                continue
            text, seconds = run_step(step, scratch, quick)
            done.add(step.command)
            print(f"lesson {lesson}: {step.name or step.command}: {seconds:.0f} s", flush=True)
            if step.name is not None:
                (out / "output" / f"{step.name}.txt").write_text(text)
            for source, figure in step.figures.items():
                shutil.copyfile(scratch / source, out / "figures" / f"{figure}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--lessons", type=int, nargs="+", choices=sorted(LESSONS), default=sorted(LESSONS))
    parser.add_argument("--quick", action="store_true", help=f"add --trainer {QUICK_TRAINER} to every fit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for output/ and figures/")
    parser.add_argument("--runs-dir", type=Path, help="a new or empty folder to run in, kept (default: temporary)")
    options = parser.parse_args(argv)
    if options.quick and options.out.resolve() == DEFAULT_OUT:
        parser.error("--quick output is not the lessons' output: give --out DIR")
    if options.runs_dir and options.runs_dir.exists() and any(options.runs_dir.iterdir()):
        parser.error(f"--runs-dir {options.runs_dir} is not empty; the pages' runs are version_0 of a new folder")
    start = time.perf_counter()
    if options.runs_dir:
        options.runs_dir.mkdir(parents=True, exist_ok=True)
        run_lessons(options.lessons, options.out, options.runs_dir.resolve(), options.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="lessons-") as scratch:
            run_lessons(options.lessons, options.out, Path(scratch), options.quick)
    print(f"written: {options.out / 'output'}, {options.out / 'figures'} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
