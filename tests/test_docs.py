"""Every page of the docs and the README runs as written (``docs/contributing-docs.md``): Python blocks run, shell
lines run in smoke mode, YAML blocks equal the files they name. A renamed key, a moved config or a changed file
fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import FASHION_MNIST_SYSTEM_DIR
from tests.docs_runner import (
    _SHIM,
    REPO_ROOT,
    Block,
    Workspace,
    check_yaml,
    checkpoint_fixture,
    page_directives,
    read_blocks,
    run_page,
    shell_script,
)

# The shim's smoke() alone, run with a stub environment that names the smoke trainer.
_SHIM_SMOKE = "def smoke(args):" + _SHIM.split("def smoke(args):", 1)[1].split("\n\n\n", 1)[0]
PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason="the pages' commands train on the real Fashion-MNIST (Debian's dataset-fashion-mnist; make test installs it)",
)


@pytest.fixture(scope="session")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tests/docs_server.py for this test process: the pages' commands fork from it instead of importing torch
    and Lightning again each time."""
    socket_path = str(tmp_path_factory.mktemp("server") / "docs.sock")
    server = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "docs_server.py"), socket_path],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield socket_path
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def checkpoint_run(tmp_path_factory: pytest.TempPathFactory, docs_server: str) -> Path:
    return checkpoint_fixture(tmp_path_factory.mktemp("checkpoint") / "work", server=docs_server)


@needs_fashion_mnist
@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO_ROOT)))
def test_page_runs_as_written(page: Path, tmp_path: Path, request: pytest.FixtureRequest, docs_server: str) -> None:
    workspace = Workspace(tmp_path / "work", server=docs_server)
    workspace.prepare()
    if "checkpoint" in page_directives(page):
        run = request.getfixturevalue("checkpoint_run")
        shutil.copytree(run, workspace.folder / "runs" / "lenet_fashion_mnist" / "version_0")
    print("\n".join(run_page(page, workspace)))


def test_no_table_repeats_its_header_row() -> None:
    repeated = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i in range(2, len(lines)):
            if lines[i].startswith("|") and lines[i] == lines[i - 2] and set(lines[i - 1]) <= set("|-: "):
                repeated.append(f"{page.relative_to(REPO_ROOT)}:{i + 1}: {lines[i][:60]}")
    assert not repeated


# --- the runner itself: each check can fail ---------------------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_blocks_are_read_with_their_directive_indent_and_snippets(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        '<!-- docs-test: keras -->\n```python\nmodel = Sequential()\n```\n\n=== "tab"\n\n    ```bash\n'
        '    python cli.py fit \\\n        --config x.yaml\n    ```\n\n```python\n--8<-- "cli.py"\n```\n',
    )
    keras, shell, snippet = read_blocks(page)
    assert (keras.language, keras.directive, keras.line) == ("python", "keras", 2)
    assert shell.code == "python cli.py fit \\\n    --config x.yaml\n"
    assert snippet.code == (REPO_ROOT / "cli.py").read_text()


def test_shell_lines_are_run_checked_or_left_out_by_kind() -> None:
    code = (
        ". .venv/bin/activate\n"
        "make quickstart   # set up\n"
        "python cli.py fit --config configs/lenet_mnist.yaml  # MNIST [network]\n"
        "torchrun --nproc-per-node=4 cli.py fit --config configs/bn_cnn_cifar10.yaml --trainer.devices 4\n"
        "sbatch --nodes=1 slurm/train.sbatch configs/lenet_mnist.yaml\n"
        "python benchmarks/inference.py --rounds 5\n"
        "python cli.py summary --config configs/lenet_fashion_mnist.yaml  # the table # not a tag\n"
    )
    lines = shell_script(Block(Path("page.md"), 1, "bash", code)).splitlines()[1:]
    assert lines[0].startswith(": not run") and lines[1].startswith(": not run")
    assert lines[2] == ": && python cli.py fit --config configs/lenet_mnist.yaml --print_config > /dev/null"
    assert lines[3].endswith(
        "python cli.py fit --config configs/bn_cnn_cifar10.yaml --trainer.devices 4 --print_config > /dev/null"
    )
    assert (
        lines[4]
        == "test -f slurm/train.sbatch && python cli.py fit --config configs/lenet_mnist.yaml --print_config > /dev/null"
    )
    assert lines[5] == "check_options benchmarks/inference.py --rounds 5"
    assert lines[6] == "python cli.py summary --config configs/lenet_fashion_mnist.yaml"


def test_sweep_lines_are_checked_with_a_dry_run_or_run_as_two_smoke_trials() -> None:
    code = (
        "sbatch --array=0-7 slurm/tune.sbatch configs/bn_cnn_fashion_mnist.yaml configs/search/bn_cnn.yaml\n"
        "python cli.py tune --config c.yaml --search s.yaml --trials 40 --workers 4  # [GPU]\n"
    )
    lines = shell_script(Block(Path("page.md"), 1, "bash", code)).splitlines()[1:]
    assert lines[0] == (
        "test -f slurm/tune.sbatch && python cli.py tune --config configs/bn_cnn_fashion_mnist.yaml "
        "--search configs/search/bn_cnn.yaml --dry-run > /dev/null"
    )
    assert (
        lines[1]
        == ": && python cli.py tune --config c.yaml --search s.yaml --trials 40 --workers 4 --dry-run > /dev/null"
    )
    namespace = {"os": SimpleNamespace(environ={"SMOKE_TRAINER": "SMOKE"}), "SUBCOMMANDS": ("tune",)}
    exec(_SHIM_SMOKE, namespace)  # the shim's smoke(): a sweep of two trials, one at a time, on the smoke trainer
    smoke = namespace["smoke"]
    assert smoke(["tune", "--config", "c", "--trials", "40", "--workers=4", "--search", "s"]) == [
        "tune",
        "--config",
        "c",
        "--search",
        "s",
        "--trials",
        "2",
        "--trainer",
        "SMOKE",
    ]


def test_a_yaml_block_that_names_a_file_must_match_it(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "work")
    text = (REPO_ROOT / "configs" / "lenet_mnist.yaml").read_text()
    assert check_yaml(Block(Path("p.md"), 1, "yaml", "# configs/lenet_mnist.yaml\n" + text), 0, workspace).startswith(
        "equal"
    )
    with pytest.raises(AssertionError, match="differs"):
        check_yaml(Block(Path("p.md"), 1, "yaml", "# configs/lenet_mnist.yaml\nmodel: other.yaml\n"), 0, workspace)
    excerpt = "# configs/lenet_mnist.yaml (excerpt)\ntrainer: {max_epochs: 99}\n"
    with pytest.raises(AssertionError, match="max_epochs is 99 in the block"):
        check_yaml(Block(Path("p.md"), 1, "yaml", excerpt), 0, workspace)


@needs_fashion_mnist
def test_a_renamed_key_or_an_unknown_script_option_fails_the_page(tmp_path: Path, docs_server: str) -> None:
    workspace = Workspace(tmp_path / "work", server=docs_server)
    workspace.prepare()
    bad_key = "```bash\npython cli.py fit --config configs/lenet_fashion_mnist.yaml --model.init_args.net.init_args.filterz 3\n```\n"
    with pytest.raises(AssertionError, match="filterz"):
        run_page(_page(tmp_path, bad_key), workspace)
    bad_option = "```bash\npython benchmarks/inference.py --roundz 5\n```\n"
    with pytest.raises(AssertionError, match="--roundz is not an option"):
        run_page(_page(tmp_path, bad_option), workspace)
