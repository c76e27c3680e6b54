"""scripts/results.py: the quick budget on fake IDX data writes a row, the banner and the references; a config whose
data is missing gets a "not run here" row; a crash makes the script fail; several seeds read as mean (min–max).
The run over every shipped config on the real Fashion-MNIST is marked slow."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR, REPO_ROOT, load_script, write_fake_mnist

SCRIPT = REPO_ROOT / "scripts" / "results.py"


results = load_script(SCRIPT, "results_script")


def _row(text: str, config: str) -> list[str]:
    """The cells of ``config``'s line in the results table."""
    line = next(line for line in text.splitlines() if line.startswith(f"| `{config}` |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_quick_run_writes_a_figure_the_quick_banner_and_the_references(tmp_path, capsys):
    data = write_fake_mnist(tmp_path / "fashion")
    out = tmp_path / "out" / "results.md"
    status = results.main([
        "--quick", "--configs", str(CONFIGS / "lenet_fashion_mnist.yaml"), "--out", str(out),
        "--data.init_args.data_dir", str(data), "--data.init_args.download", "false",
    ])  # fmt: skip

    assert status == 0
    text = out.read_text()
    config, dataset, seeds, precision, epochs, epoch_s, seconds, accuracy, params = _row(text, "lenet_fashion_mnist")
    assert (dataset, seeds, precision, epochs, params) == ("Fashion-MNIST", "42", "32-true", "1", "62,226")
    assert float(epoch_s) >= 0
    assert 0.0 <= float(accuracy) <= 1.0
    assert float(seconds) > 0
    assert "QUICK BUDGET — NOT RESULTS" in text
    for name, published, *_ in results.REFERENCES:
        assert f"| {name} | {published:g} |" in text
    assert "| 2 Conv+pooling+BN | 0.934 | `lenet_fashion_mnist`" in text
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text  # no local paths
    progress = capsys.readouterr().out
    assert "lenet_fashion_mnist seed 42: running" in progress and "lenet_fashion_mnist seed 42: test acc" in progress


def test_missing_data_is_a_not_run_row_and_a_crash_fails_the_script(tmp_path, capsys):
    crashing = tmp_path / "crashing.yaml"  # passes the parser, then Lightning's loop raises: a traceback, status 1
    crashing.write_text(
        f"model: {CONFIGS / 'model' / 'lenet.yaml'}\ndata: {CONFIGS / 'data' / 'mnist.yaml'}\n"
        "trainer:\n  max_steps: -5\n"
    )
    out = tmp_path / "results.md"
    status = results.main([
        "--quick", "--configs", str(CONFIGS / "lenet_mnist.yaml"), str(crashing), "--out", str(out),
        "--data.init_args.data_dir", str(tmp_path / "empty"), "--data.init_args.download", "false",
    ])  # fmt: skip

    assert status == 1
    text = out.read_text()  # written all the same
    assert _row(text, "lenet_mnist")[7] == "not run here: MNIST not found and data.download is false"
    assert _row(text, "crashing")[7].startswith("**FAILED**: exit status 1: ")
    assert "max_steps" in _row(text, "crashing")[7]
    assert str(tmp_path) not in text
    err = capsys.readouterr().err
    assert "crashing (seed 42) FAILED" in err and 'File "' in err  # loud, with the end of the run's traceback


def _run(seed: int, acc: float, epochs: float, seconds: float, epoch_seconds: float = 60) -> results.Run:
    return results.Run("best_fashion_mnist", seed, seconds=seconds, test_acc=acc, epochs=epochs, params=1_500,
                       trainable=1_400, epoch_seconds=epoch_seconds, precision="bf16-mixed")  # fmt: skip


def test_several_seeds_read_as_mean_and_range():
    row = results.Row("best_fashion_mnist", "Fashion-MNIST", [_run(42, 0.93, 13, 800), _run(1, 0.95, 13, 820),
                                                              _run(2, 0.94, 11, 840)])  # fmt: skip
    assert results.row_cells(row) == [
        "`best_fashion_mnist`", "Fashion-MNIST", "42, 1, 2", "bf16-mixed", "12.3 (11–13)", "60", "820 (800–840)",
        "0.9400 (0.9300–0.9500)", "1,500 (1,400 trainable)",
    ]  # fmt: skip
    budgeted = results.Row("best_fashion_mnist", "Fashion-MNIST", [_run(42, 0.94, 29.5, 850, 27),
                                                                   _run(1, 0.94, 30.25, 850, 26)])  # fmt: skip
    assert results.row_cells(budgeted)[4:6] == ["29.9 (29.5–30.2)", "26 (26–27)"]
    assert results.spread([0.9312], results._accuracy) == "0.9312"
    assert results.spread([13, 13, 13], results._count) == "13"  # equal values once


def _metrics_csv(path: Path, ends: list[tuple[int, int]]) -> Path:
    """A metrics.csv with an end-of-epoch training row at each (epoch, step), then a test row."""
    rows = ["epoch,step,test/acc,train/acc_epoch,val/acc"]
    rows += [f"{epoch},{step},,0.9,0.9" for epoch, step in ends]
    rows += [f"{ends[-1][0]},{ends[-1][1]},0.9412,,"]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_budget_cut_last_epoch_counts_by_its_share_of_steps(tmp_path):
    # 430 steps an epoch (steps logged from 0); the budget ends the third epoch 215 steps in.
    acc, epochs = results.read_metrics(_metrics_csv(tmp_path / "a.csv", [(0, 429), (1, 859), (2, 1074)]))
    assert (acc, epochs) == (0.9412, 2.5)
    assert results.read_metrics(_metrics_csv(tmp_path / "b.csv", [(0, 429), (1, 859)]))[1] == 2  # whole epochs
    assert results.read_metrics(_metrics_csv(tmp_path / "c.csv", [(0, 99)]))[1] == 1  # one epoch: nothing to compare


def test_epoch_time_is_the_median_of_the_whole_epochs_printed():
    printed = "\n".join([
        "run: runs/best_fashion_mnist/version_0",
        "epoch 1  train loss 0.9000 acc 0.7000  val loss 0.5000 acc 0.8500  lr 2.99e-03  31 s",
        "epoch 2/12  train loss 0.5000  val loss 0.4000 acc 0.8800  lr 2.90e-03  1 min 05 s  ETA 11 min 00 s",
        "epoch 3  train loss 0.4000  val loss 0.3500 acc 0.8900  lr 2.80e-03  29 s",
        "epoch 4  train loss 0.4000  val loss 0.3500 acc 0.8900  lr 1.00e-06  9 s",  # cut by the budget: left out
    ])  # fmt: skip
    assert results.epoch_seconds(printed) == 31
    assert results.epoch_seconds("epoch 1  train loss 0.5  12 s") == 12
    assert results.epoch_seconds("no epochs here") is None


def test_configs_with_several_seeds_take_turns():
    record, epochs = results.RECORD_CONFIGS
    lenet = CONFIGS / "lenet_fashion_mnist.yaml"
    order = [(config.stem, seed) for config, seed in results.run_order([record, epochs, lenet], None, quick=False)]
    assert order == [
        ("best_fashion_mnist", 42), ("best_fashion_mnist_epochs", 42), ("lenet_fashion_mnist", 42),
        ("best_fashion_mnist", 1), ("best_fashion_mnist_epochs", 1),
        ("best_fashion_mnist", 2), ("best_fashion_mnist_epochs", 2),
    ]  # fmt: skip


def test_the_record_fragment_lists_the_pair_and_every_run_in_order(monkeypatch):
    rows = [results.Row("best_fashion_mnist", "Fashion-MNIST", [_run(42, 0.945, 31.5, 880, 25), _run(1, 0.947, 31.0, 881, 26)]),
            results.Row("best_fashion_mnist_epochs", "Fashion-MNIST", [_run(42, 0.935, 12, 330, 25), _run(1, 0.936, 12, 335, 26)])]  # fmt: skip
    rows[1].runs[0].config = rows[1].runs[1].config = "best_fashion_mnist_epochs"
    when = datetime.datetime(2026, 12, 2, 15, 0, tzinfo=datetime.timezone.utc)
    text = results.render_record(rows, ["--record"], when)
    assert text.startswith("<!-- Written by scripts/results.py --record")
    assert "Measured on 2026-12-02 (15:00 UTC) by `python scripts/results.py --record`" in text
    assert "Machine: " in text and "(AVX512-BF16 " in text and ", AMX " in text
    assert "| `best_fashion_mnist` | Fashion-MNIST | 42, 1 | bf16-mixed | 31.2 (31–31.5) | 26 (25–26) |" in text
    order = [line.split("|")[1:3] for line in text.splitlines() if line.startswith(("| 42 |", "| 1 |"))]
    assert [[a.strip(), b.strip()] for a, b in order] == [
        ["42", "`best_fashion_mnist`"], ["42", "`best_fashion_mnist_epochs`"],
        ["1", "`best_fashion_mnist`"], ["1", "`best_fashion_mnist_epochs`"],
    ]  # fmt: skip


def test_the_readme_record_paragraph_is_rewritten_between_its_markers(tmp_path):
    rows = [results.Row("best_fashion_mnist", "Fashion-MNIST", [_run(42, 0.9450, 31.5, 880, 25), _run(1, 0.9470, 31.0, 884, 26)]),
            results.Row("best_fashion_mnist_epochs", "Fashion-MNIST", [_run(42, 0.9350, 12, 330, 25)])]  # fmt: skip
    summary = results.record_summary(rows)
    assert summary.startswith(
        "`python cli.py fit --config configs/best_fashion_mnist.yaml`: Fashion-MNIST test accuracy **0.9460** (mean "
        "of 2 seeds, 0.9450–0.9470) in 884 s or less from launch to exit, on a "
    )
    assert "(bf16-mixed, 31.2 (31–31.5) epochs of 26 (25–26) s)" in summary
    assert "its 12-epoch variant (`configs/best_fashion_mnist_epochs.yaml`) reached 0.9350 on the same seeds" in summary
    start, end = results.README_RECORD
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{start}\nold figures\n{end}\n\n## Next\n")
    results.write_readme_record(readme, summary)
    assert readme.read_text() == f"# Title\n\n{start}\n{summary}\n{end}\n\n## Next\n"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no record paragraph"):
        results.write_readme_record(readme, summary)


def test_seeds_follow_the_seeds_table_in_the_full_budget_only():
    assert results.seeds_for("best_fashion_mnist", None, quick=False) == (42, 1, 2)
    assert results.seeds_for("best_fashion_mnist", None, quick=True) == (42,)
    assert results.seeds_for("lenet_fashion_mnist", None, quick=False) == (42,)
    assert results.seeds_for("lenet_fashion_mnist", [3, 4], quick=False) == (3, 4)


def test_reasons_keep_no_local_paths():
    weights = (
        "weights='IMAGENET1K_V1': /home/me/.cache/torch/hub/checkpoints/vgg16-397923af.pth is not there and "
        "downloading https://download.pytorch.org/models/vgg16-397923af.pth failed (<urlopen error>); offline, copy "
        "that file to this path or set weights to a local state-dict file."
    )
    assert results.public_reason(weights) == (
        "weights='IMAGENET1K_V1': vgg16-397923af.pth is not there and downloading "
        "https://download.pytorch.org/models/vgg16-397923af.pth failed (<urlopen error>)"
    )
    data = "CIFAR-10 not found (looked in: /srv/data, data for x) and downloading it failed (URLError). Fix: set it"
    assert results.public_reason(data) == "CIFAR-10 not found and downloading it failed (URLError)"


def test_keras_figures_join_the_references_when_their_file_exists(tmp_path, monkeypatch):
    lenet = results.Run("lenet_fashion_mnist", 42, test_acc=0.88, epochs=8, seconds=80, params=62_226)
    rows = [results.Row("lenet_fashion_mnist", "Fashion-MNIST", [lenet])]
    monkeypatch.setattr(results, "KERAS_RESULTS", tmp_path / "keras_results.json")
    assert not any("Keras" in line for line in results.reference_table(rows))  # no file, no row

    results.KERAS_RESULTS.write_text('[{"name": "LeNet", "test_acc": 0.8791, "config": "lenet_fashion_mnist"}]')
    keras_row = "| Keras, the course's code: LeNet | 0.8791 | `lenet_fashion_mnist` | 0.8800 |"
    assert keras_row in results.reference_table(rows)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_quick_budget_over_every_config_on_the_real_data(tmp_path):
    out = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    text = out.read_text()
    for config in results.experiment_configs():
        accuracy = _row(text, config.stem)[7]
        assert accuracy.startswith("not run here: ") or 0.0 <= float(accuracy) <= 1.0, (config.stem, accuracy)
    assert 0.0 <= float(_row(text, "lenet_fashion_mnist")[7]) <= 1.0  # the offline data is there: it must have run


def test_the_results_page_is_the_scripts_output():
    """docs/results/experiments.md is what the script writes: its header names the command, date and machine."""
    page = results.DEFAULT_OUT.read_text()
    assert page.startswith("# Every experiment config\n\nMade by `python scripts/results.py` on ")
    assert "Machine: " in page and "| config | data | seeds |" in page


def test_a_quick_check_never_replaces_the_real_table():
    assert results.parse_args(["--quick"])[0].out.name == "results-quick.md"
    assert results.parse_args([])[0].out == results.DEFAULT_OUT


def test_the_readme_record_paragraph_and_the_record_page_are_the_scripts_output():
    """README's record paragraph and docs/results/record_runs.md come from one `results.py --record` run: the same
    mean test accuracy, and the page names its command, date and CPU."""
    page = results.RECORD_OUT.read_text()
    assert page.startswith("<!-- Written by scripts/results.py --record")
    assert "by `python scripts/results.py --record`" in page and "Machine: " in page
    accuracy = _row(page, "best_fashion_mnist")[7].split(" ")[0]
    readme = results.README.read_text()
    start, end = results.README_RECORD
    paragraph = readme.split(start, 1)[1].split(end, 1)[0]
    assert f"test accuracy **{accuracy}**" in paragraph
