"""The package as a user gets it from ``pip install``: the wheel is built, installed into a fresh venv outside the
checkout, and run from an empty folder: the shipped configs by name, the console script, and the subclassing
how-to page as written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import FASHION_MNIST_SYSTEM_DIR
from tests.docs_runner import REPO_ROOT, Workspace, run_page

SUBCLASS_PAGE = REPO_ROOT / "docs" / "how-to" / "subclass-the-module.md"
TIMEOUT_S = 900  # catches a hang only


def _run(command: list, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel installed; returns its ``bin/``.

    The wheel is built from a copy of the package's files (the build leaves nothing in the checkout). The venv
    takes its dependencies from this interpreter's site-packages through a ``.pth`` line (torch alone is several
    GB to install again), and the wheel itself with ``--no-deps``: ``lightning_cnn`` in it comes from the wheel,
    which the test checks."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "configs"):
        (shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy)(REPO_ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "lightning_cnn", source / "lightning_cnn", symlinks=True, ignore=ignore)
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"), "."], source)
    (wheel,) = (root / "dist").glob("lightning_cnn-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], root)
    return venv / "bin"


def test_the_wheel_carries_every_shipped_config(tmp_path: Path, installed: Path) -> None:
    shipped = sorted(str(p.relative_to(REPO_ROOT / "configs")) for p in (REPO_ROOT / "configs").rglob("*.yaml"))
    (wheel,) = (installed.parents[1] / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.removeprefix("lightning_cnn/configs/") for n in names if "/configs/" in n) == shipped
    located = _run([str(installed / "python"), "-c", "import lightning_cnn; print(lightning_cnn.__file__)"], tmp_path)
    assert Path(located.strip()).is_relative_to(installed.parent), "lightning_cnn came from elsewhere than the wheel"


@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="trains on the real Fashion-MNIST (make test installs it)"
)
def test_a_shipped_config_by_name_from_an_empty_folder(tmp_path: Path, installed: Path) -> None:
    out = _run(
        [str(installed / "lightning-cnn"), "fit", "--config", "lenet_fashion_mnist", "--trainer.fast_dev_run", "2"],
        tmp_path,
    )
    assert "test/acc" in out
    wrong = subprocess.run([str(installed / "lightning-cnn"), "fit", "--config", "lenet_fashion_mnst"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert wrong.returncode == 2 and "no shipped config of that name" in wrong.stderr
    assert "lenet_fashion_mnist" in wrong.stderr and "Traceback" not in wrong.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "fast_dev_run and a refused config write nothing"


@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="trains on the real Fashion-MNIST (make test installs it)"
)
def test_the_subclassing_page_runs_against_the_wheel(tmp_path: Path, installed: Path) -> None:
    workspace = Workspace(tmp_path / "empty", python=str(installed / "python"), in_checkout=False)
    workspace.prepare()
    done = run_page(SUBCLASS_PAGE, workspace)
    assert sum(line.endswith(": ran") for line in done) >= 2, done


def test_the_console_script_and_cli_py_print_the_same(tmp_path: Path, installed: Path) -> None:
    from_wheel = _run([str(installed / "lightning-cnn"), "summary", "--config", "bn_cnn_fashion_mnist"], tmp_path)
    checkout = _run([sys.executable, "cli.py", "summary", "--config", "configs/bn_cnn_fashion_mnist.yaml"], REPO_ROOT)
    assert "Total params: 358,210" in from_wheel and from_wheel == checkout
