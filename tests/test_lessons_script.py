"""scripts/lessons.py: lesson 1 in quick mode writes each command's output, starting with the command, and its
figures; the pages run what the script runs and show what it writes; progress bars shrink to one line per epoch.
The quick run trains on the real Fashion-MNIST and is marked slow."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import FASHION_MNIST_SYSTEM_DIR, REPO_ROOT, load_script

SCRIPT = REPO_ROOT / "scripts" / "lessons.py"


lessons = load_script(SCRIPT, "lessons_script")


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason="the lessons run on the real Fashion-MNIST (Debian's dataset-fashion-mnist; make test installs it)",
)
def test_quick_lesson_1_writes_the_commands_their_output_and_the_figures(tmp_path):
    out = tmp_path / "lessons"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--lessons", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    summary = (out / "output" / "1-lenet-summary.txt").read_text()
    assert summary.startswith("$ python cli.py summary --config configs/lenet_fashion_mnist.yaml\n")
    assert "Total params: 62,226" in summary
    fit = (out / "output" / "1-lenet-fit.txt").read_text()
    smoke = " --trainer configs/trainer/smoke.yaml"
    assert fit.startswith(f"$ python cli.py fit --config configs/lenet_fashion_mnist.yaml{smoke}\n")
    assert "test/acc" in fit and "runs/lenet_fashion_mnist/version_0/learning_curves.png" in fit
    assert str(tmp_path) not in fit and str(REPO_ROOT) not in fit  # no local paths
    for figure in ("1-lenet-learning-curves", "1-lenet-confusion-matrix"):
        assert (out / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob("output/2-*"))  # only the lessons asked for


def test_the_pages_run_what_the_script_runs_and_show_what_it_writes():
    shown, written = set(), set()
    for lesson, steps in lessons.LESSONS.items():
        page = (lessons.PAGES / lessons.PAGE_FILES[lesson]).read_text()
        commands = re.sub(r"\\\n\s*", "", page)  # continuation lines joined
        for step in steps:
            assert step.command in commands, f"lesson {lesson}'s page does not show `{step.command}`"
            if step.name:
                written.add(f"output/{step.name}.txt")
            written.update(f"figures/{figure}.png" for figure in step.figures.values())
        shown.update(re.findall(r'--8<-- "docs/lessons/(output/[\w.-]+\.txt)"', page))
        shown.update(re.findall(r"\]\((figures/[\w.-]+\.png)\)", page))
    assert shown == written


def test_progress_bars_shrink_to_each_epochs_last_line_and_the_cuts_are_marked():
    def bar(label, n, total, metrics=""):
        return f"{label}: {100 * n // total:3d}%|#| {n}/{total} [00:01<00:00, 9.00it/s{metrics}]"

    lines = ["Seed set to 42", "Model: table"]
    for epoch in range(2):
        lines += [bar(f"Epoch {epoch}", n, 150) for n in range(151)]
        lines += ["", "\x1b[A" + bar("Validation DataLoader 0", 1, 1)]
        lines += [bar(f"Epoch {epoch}", 150, 150, f", val/acc=0.{epoch + 5}")]
    lines += [bar("Epoch 1", 0, 150, ", val/acc=0.6") + "`Trainer.fit` stopped.", "test/acc 0.88"]
    text = "\n".join(lines).replace("Seed", "old line\rSeed")

    shown = lessons.shorten(lessons.terminal_lines(text))
    assert shown[:2] == ["Seed set to 42", "Model: table"]
    assert shown[2] == "[… 153 lines …]"  # epoch 0's bars, the blank line and the validation bar
    assert shown[3] == bar("Epoch 0", 150, 150, ", val/acc=0.5")
    assert shown[5] == bar("Epoch 1", 150, 150, ", val/acc=0.6")
    assert shown[6:] == ["[… 1 line …]", "`Trainer.fit` stopped.", "test/acc 0.88"]
    short = ["a\rb  ", "c"]
    assert lessons.shorten(lessons.terminal_lines("\n".join(short))) == ["b", "c"]  # short output: only cleaned
