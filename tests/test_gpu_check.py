"""benchmarks/gpu_check.sh in its dry mode (CPU): the script runs end to end, its frozen-BatchNorm check holds
under 2-process DDP, and ``--markdown`` writes its table as a fragment naming the command, the date and the machine.
On a CUDA machine the same script measures; its figures are on the docs' benchmarks page."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.multiprocess


def test_gpu_check_dry_mode_runs_and_finds_frozen_batchnorm_unchanged(tmp_path):
    fragment = tmp_path / "gpu_check.md"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--markdown", str(fragment)],
        env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "DRY MODE on CPU" in result.stdout
    assert "| BN CNN, fp32 | 1 | 32-true |" in result.stdout and "| VGG16 32 px, fp32 | 1 |" in result.stdout
    assert (
        "(2 process(es), sync_batchnorm off) + FreezeBackbone: 20 layers, largest change 0 — unchanged" in result.stdout
    )
    text = fragment.read_text()
    assert f"```bash\npython benchmarks/gpu_check.py --dry --markdown {fragment}\n```" in text
    assert "Measured on " in text and "UTC" in text and "GPU: none used" in text
    assert "\n\n| run | processes | precision |" in text and "\n| BN CNN, fp32 | 1 | 32-true |" in text
