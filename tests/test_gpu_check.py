"""benchmarks/gpu_check.sh in its dry mode (CPU): the script runs end to end and its frozen-BatchNorm check holds
under 2-process DDP. On a CUDA machine the same script measures; its figures are in the README."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.multiprocess


def test_gpu_check_dry_mode_runs_and_finds_frozen_batchnorm_unchanged():
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry"],
        env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "DRY MODE on CPU" in result.stdout
    assert "| BN CNN, fp32 | 1 | 32-true |" in result.stdout and "| VGG16 32 px, fp32 | 1 |" in result.stdout
    assert (
        "(2 process(es), sync_batchnorm off) + FreezeBackbone: 20 layers, largest change 0 — unchanged" in result.stdout
    )
