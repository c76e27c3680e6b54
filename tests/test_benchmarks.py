"""The speed benchmarks run as the docs show them: our side of benchmarks/keras_parity.py (a real ``cli.py fit``
with the flags it passes), the optimizer settings it hands to Keras (read from the configs),
benchmarks/speed_options.py on IDX files in the real format, and benchmarks/inference.py; and the Markdown
fragment every benchmark writes with ``--markdown PATH`` (docs/results/benchmarks/): the command that ran, the date,
the machine, then the printed tables. The Keras side needs Keras and TensorFlow, which are never installed with the
package; its figures are on the benchmarks page."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, write_fake_mnist

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import machine  # noqa: E402  (benchmarks/machine.py)

keras_parity = pytest.importorskip("keras_parity")
speed_options = pytest.importorskip("speed_options")
inference = pytest.importorskip("inference")

BENCHMARKS = sorted(path for path in (REPO_ROOT / "benchmarks").glob("*.py") if path.name != "machine.py")


def _assert_fragment_header(text: str, command: str) -> None:
    """The fragment names the command that ran, the date and time (UTC), the machine, the software and the load."""
    assert f"```bash\n{command}\n```" in text
    assert re.search(r"^Measured on \d{4}-\d\d-\d\d at \d\d:\d\d UTC, in \d+ min \d+ s, by:$", text, re.MULTILINE)
    machine_line = f"- **Machine:** {machine.cpu_name()}, {os.cpu_count()} logical cores (AVX512-BF16 "
    assert machine_line in text and ", AMX " in text and "GPU: none used" in text
    assert re.search(r"^- \*\*Software:\*\* Python [\d.]+, torch \S+, Lightning \S+$", text, re.MULTILINE)
    assert re.search(r"^- \*\*Load:\*\* 1-min load average [\d.]+ at the start, [\d.]+ at the end", text, re.MULTILINE)


def test_keras_gets_the_configs_optimizer_settings():
    assert keras_parity._optimizer_for_keras("lenet_fashion_mnist.yaml") == {
        "name": "Adam",
        "args": {"learning_rate": 1e-3, "epsilon": 1e-8, "beta_1": 0.9, "beta_2": 0.999},
    }
    assert keras_parity._optimizer_for_keras("bn_cnn_fashion_mnist.yaml") == {
        "name": "Adadelta",
        "args": {"learning_rate": 1.0, "rho": 0.95, "epsilon": 1e-7},
    }


@pytest.mark.multiprocess  # a `cli.py fit` process of its own
def test_our_side_of_the_keras_benchmark_times_steps_and_counts_parameters(tmp_path):
    data = write_fake_mnist(tmp_path / "data", n_train=240, n_test=40)
    job = {
        "model": "LeNet",
        "precision": "fp32",
        "kind": "time",
        "config": keras_parity.MODELS["LeNet"],
        "piece": None,
        "data_dir": str(data),
        "batch_size": 16,
        "warmup": 2,
        "steps": 3,
    }
    result = keras_parity.run_ours(job, tmp_path / "run")
    assert (result["total"], result["trainable"], result["non_trainable"]) == (62_226, 62_226, 0)
    assert result["precision"] == "32-true"
    assert result["ms"] > 0


def test_speed_options_prints_a_row_per_variant_and_writes_them_as_markdown(tmp_path, monkeypatch, capsys):
    data = write_fake_mnist(tmp_path / "data", n_train=2100, n_test=40)
    variants = ["torch defaults", "+ channels_last (default)"]
    fragment = tmp_path / "results" / "speed_options.md"
    argv = ["--models", "lenet", "--rounds", "1", "--steps", "2", "--warmup", "1", "--batch-size", "16"]
    argv += ["--data-dir", str(data), "--markdown", str(fragment), "--variants", *variants]
    monkeypatch.setattr(sys, "argv", ["speed_options.py", *argv])  # as started from the shell
    speed_options.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| torch defaults") or line.startswith("| + chan")]
    assert len(rows) == 2 and "| 1.00 (1.00–1.00) |" in rows[0]

    text = fragment.read_text()
    command = "python benchmarks/speed_options.py " + shlex.join(argv)
    _assert_fragment_header(text, command)
    # The printed table, as a Markdown table: a blank line before it, its rows as printed.
    assert "\n\n| variant | ms/step |" in text and all(f"\n{row}\n" in text for row in rows)


def test_speed_options_says_whether_bf16_accuracy_is_within_float32s_spread():
    assert "default + bf16" in speed_options.ACCURACY_VARIANTS
    line = speed_options._bf16_parity([0.8429, 0.8694, 0.8550], [0.8500, 0.8710, 0.8600])
    assert line == (
        "bfloat16 vs float32, 1-epoch test accuracy over 3 seeds: mean 0.8603 vs 0.8558 (difference +0.0046); "
        "2 of 3 bfloat16 runs inside float32's range 0.8429–0.8694."
    )


def test_inference_writes_its_table_as_a_markdown_fragment(tmp_path, capsys):
    fragment = tmp_path / "inference.md"
    argv = ["--rounds", "1", "--seconds", "0.02", "--markdown", str(fragment)]
    inference.main(argv)  # no checkpoint: it makes one with a smoke fit
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| eager ")]

    text = fragment.read_text()
    _assert_fragment_header(text, "python benchmarks/inference.py " + " ".join(argv))
    assert len(printed) == 2 and all(f"\n{row}\n" in text for row in printed)
    assert re.search(r"^LeNet from last\.ckpt, .*; 1 rounds of 0\.02 s per side and batch", text, re.MULTILINE)


def test_a_printed_line_stays_a_paragraph_and_tables_stay_tables(tmp_path):
    report = machine.Report("benchmarks/example.py", ["--rounds", "2"])
    report.print("\n2. Random draws (4000 per side)")
    report.print("| a | b |\n|---|---|\n| 1 | 2 |")
    report.print("- not a list")
    report.print("| c |\n|---|\n| 3 |")
    report.write_markdown(str(tmp_path / "new folder" / "example.md"))
    text = (tmp_path / "new folder" / "example.md").read_text()
    _assert_fragment_header(text, "python benchmarks/example.py --rounds 2")
    # Each printed line a paragraph (a list marker escaped), each run of table rows a table.
    body = "2\\. Random draws (4000 per side)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n\\- not a list\n\n| c |\n|---|\n| 3 |\n"
    assert text.endswith(" logical cores\n\n" + body)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_every_benchmark_writes_its_report_with_markdown(script):
    source = script.read_text()
    assert "add_markdown_argument(parser)" in source and "report.write_markdown(args.markdown" in source


@pytest.mark.multiprocess  # `cli.py tune` processes, each starting `fit` processes
def test_the_sweep_benchmark_compares_pruning_on_the_same_search(tmp_path):
    pytest.importorskip("optuna", reason="the [tune] extra (make setup installs it)")
    data = write_fake_mnist(tmp_path / "data", n_train=240, n_test=40)
    fragment = tmp_path / "tune.md"
    argv = ["--parts", "pruning", "--rounds", "1", "--trials", "2", "--train-size", "120", "--epochs", "1"]
    argv += ["--data-dir", str(data), "--markdown", str(fragment)]
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "tune.py"), *argv], cwd=tmp_path,
                            env=machine.cli_env(), capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 1 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "2" and 1 <= int(cells[2]) <= 2  # two trials of one epoch without pruning; with: 1 or 2
    assert float(cells[4]) > 0 and float(cells[5]) > 0  # best val/acc of each side
    _assert_fragment_header(fragment.read_text(), "python benchmarks/tune.py " + shlex.join(argv))
