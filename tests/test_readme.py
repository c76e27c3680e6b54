"""The README's "Use the model" commands, run as written (shell block, then the Python blocks) on a checkpoint
made the way ``make quickstart`` makes it, with a shortened training."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR, REPO_ROOT

SECTION = "## Use the model"
RUN_TIMEOUT_S = 600  # the whole block: about a minute on 2 cores


def _section_blocks(language: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(rf"```{language}\n(.*?)```", text[start:end], flags=re.S)


@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason="needs the real Fashion-MNIST from Debian's dataset-fashion-mnist package (make test installs it)",
)
def test_use_the_model_section_runs_as_written(tmp_path):
    (tmp_path / "cli.py").symlink_to(REPO_ROOT / "cli.py")
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    # `python` on PATH is this interpreter, as in the activated venv the README assumes.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"  # a script, not a link: a venv's python finds its packages from its own path
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT)}

    def run(command: list[str]) -> str:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout + result.stderr

    # The quick start's run, shortened: it writes runs/lenet_fashion_mnist/version_0/checkpoints/last.ckpt.
    run(["python", "cli.py", "fit", "--config", str(CONFIGS / "lenet_fashion_mnist.yaml"), "--trainer",
         str(CONFIGS / "trainer" / "smoke.yaml")])  # fmt: skip

    (shell,) = _section_blocks("bash")
    lines = [line for line in shell.splitlines() if line.strip() and not line.startswith(". .venv/bin/activate")]
    script = tmp_path / "use_the_model.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(lines) + "\n")
    out = run(["bash", str(script)])
    assert out.count("Saved predictions of") == 4 and "Per-class results on the test split" in out
    predictions = sorted((tmp_path / "runs" / "predict").glob("version_*/predictions.csv"))
    assert len(predictions) == 4
    assert "examples/images/more/07_shirt.jpg" in predictions[1].read_text()
    checkpoints = tmp_path / "runs" / "lenet_fashion_mnist" / "version_0" / "checkpoints"
    assert (checkpoints / "last.onnx").is_file() and (checkpoints / "last.pt").is_file()

    for i, code in enumerate(_section_blocks("python")):
        path = tmp_path / f"snippet_{i}.py"
        path.write_text(code)
        out = run(["python", str(path)])
        assert out.strip(), f"snippet {i} printed nothing"
    assert (tmp_path / "my_predictions" / "predictions.csv").is_file()
