"""benchmarks/data_scale.py end to end on a tiny image folder: every side (in memory, streamed, LitData shards)
runs in its own process and gets a row of figures in the printed report and in its Markdown fragment
(``--markdown``), which names the command, the date and the machine. Timings are not checked."""

from __future__ import annotations

import os
import re
import shlex
import sys

import pytest

from tests.conftest import FASHION_MNIST_SYSTEM_DIR, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
pytest.importorskip("litdata")
data_scale = pytest.importorskip("data_scale")

NUMBER = re.compile(r"^[\d,]+(\.\d+)?( \([\d,.]+–[\d,.]+\))?$")  # "1,234" or "1.5 (1.2–1.8)"


def _rows(report: str) -> dict[str, dict[str, str]]:
    """The table's rows by side, each as ``{column: cell}``."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in data_scale.SIDES:
            rows[cells[0]] = dict(zip(data_scale.COLUMNS, cells))
    return rows


@pytest.mark.multiprocess  # a process per side, each with loader workers
@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_data_scale_reports_every_side_with_figures(tmp_path, capsys):
    out = tmp_path / "data_scale.md"
    tiny = ["--images", "120", "--size", "32", "--batches", "3", "--warmup", "1", "--rounds", "1"]
    argv = ["--quick", *tiny, "--workdir", str(tmp_path / "work"), "--markdown", str(out)]
    data_scale.main(argv)

    rows = _rows(capsys.readouterr().out)
    assert set(rows) == set(data_scale.SIDES)
    for side, row in rows.items():
        for column in data_scale.COLUMNS[1:]:
            assert NUMBER.match(row[column]) or (column.startswith("peak PSS") and row[column] == "n/a"), (
                side,
                column,
                row[column],
            )
    assert rows["in_memory"]["training / in_memory (same round)"] == "1.00 (1.00–1.00)"
    fragment = out.read_text()
    assert _rows(fragment) == rows
    assert f"```bash\npython benchmarks/data_scale.py {shlex.join(argv)}\n```" in fragment
    assert re.search(r"^Measured on \d{4}-\d\d-\d\d at \d\d:\d\d UTC", fragment, re.MULTILINE)
    assert f"- **Machine:** {data_scale.cpu_name()}, {os.cpu_count()} logical cores (AVX512-BF16 " in fragment
    assert (tmp_path / "work" / "folder" / "test").is_dir()
