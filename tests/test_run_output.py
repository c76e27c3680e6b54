"""What a run prints: a header of four lines, then, when the output is not a terminal, one line per epoch (and a
heartbeat inside long epochs) instead of progress bars; Lightning's notices hidden unless asked for; one line
saying which checkpoint is tested."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from lightning_cnn.callbacks.progress import RunLog, _duration
from lightning_cnn.cli import CNNCLI
from lightning_cnn.cli.errors import ConfigError
from lightning_cnn.cli.notices import _hide_notices
from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR, REPO_ROOT, write_fake_mnist

CONFIG = CONFIGS / "lenet_mnist.yaml"
SHORT = ["--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]
LIGHTNING_NOTICES = "pytorch_lightning.utilities.rank_zero"  # the logger of "GPU available: …" and the tips
NOTICES = ("GPU available", "TPU available", "Seed set to", "Tip:", "already configured with model summary")


def _fit(folder, *extra: str) -> None:
    data = ["--data.init_args.data_dir", str(write_fake_mnist(folder / "mnist")), "--data.init_args.download", "false"]
    CNNCLI(args=["fit", "--config", str(CONFIG), "--trainer.max_epochs", "3", *SHORT, *data, *extra])


def test_piped_output_has_a_header_and_one_line_per_epoch(in_tmp, capsys):
    _fit(in_tmp)  # capsys: standard output is not a terminal
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "\r" not in out and "it/s" not in out, "no progress bar into a pipe"
    lines = out.splitlines()
    assert lines[0] == "run: runs/lenet_mnist/version_0"
    assert lines[1].startswith("data: MNIST, ") and "1×28×28, 10 classes" in lines[1]
    assert lines[2] == "model: LeNet, 62,226 parameters (62,226 trainable)"
    assert lines[3] == "device: cpu, 32-true, 1 process; seed 42"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all(" train loss " in line and " val loss " in line and " lr " in line for line in epochs)
    assert "ETA" in epochs[0] and "ETA" not in epochs[-1]
    assert not [notice for notice in NOTICES if notice in out]
    tested = [line for line in lines if line.startswith("Testing ")]
    assert tested == ["Testing the best checkpoint, runs/lenet_mnist/version_0/checkpoints/best-epoch02.ckpt"] or (
        len(tested) == 1 and "/checkpoints/best-epoch" in tested[0]
    )
    assert "multiple `ModelCheckpoint`" not in out


def test_a_heartbeat_line_every_n_seconds_inside_an_epoch(in_tmp, capsys, monkeypatch):
    clock = iter(float(t) for t in range(0, 10_000, 7))  # each reading 7 s after the last
    monkeypatch.setattr("lightning_cnn.callbacks.progress.time.perf_counter", lambda: next(clock))
    _fit(in_tmp, "--progress.heartbeat", "10")
    beats = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  epoch 1: step ")]
    assert beats and all("images/s" in line and "epoch ETA" in line for line in beats)


def test_bar_mode_and_log_level_info_bring_back_what_lines_mode_hides(in_tmp, capsys):
    _fit(in_tmp)
    assert _hide_notices in logging.getLogger(LIGHTNING_NOTICES).filters  # its handler writes past capsys
    capsys.readouterr()
    _fit(in_tmp, "--progress.mode", "bar", "--log_level", "info")
    assert _hide_notices not in logging.getLogger(LIGHTNING_NOTICES).filters
    out = capsys.readouterr().out
    assert "it/s" in out and not [line for line in out.splitlines() if line.startswith("epoch 1/3")]


@pytest.mark.parametrize(("key", "value"), [("--progress.mode", "quiet"), ("--progress.heartbeat", "-1")])
def test_a_bad_progress_setting_is_refused(in_tmp, key, value):
    with pytest.raises((ConfigError, SystemExit)):
        _fit(in_tmp, key, value)


def test_durations_read_naturally():
    assert [_duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
    assert RunLog("lines").prints_lines and not RunLog("bar").prints_lines


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs the real Fashion-MNIST (make test installs it)"
)
def test_the_quick_start_piped_into_a_file_is_a_short_log(tmp_path):
    """`python cli.py fit --config configs/lenet_fashion_mnist.yaml > log.txt`: under 10 KB, and at most 40 lines
    besides the Keras summary and the final tables."""
    (tmp_path / "cli.py").symlink_to(REPO_ROOT / "cli.py")
    (tmp_path / "configs").symlink_to(CONFIGS)
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        result = subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/lenet_fashion_mnist.yaml"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=1800)  # fmt: skip
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert log.stat().st_size < 10_000, f"{log.stat().st_size} bytes"
    lines = text.splitlines()
    summary = lines.index('Model: "LeNet"'), lines.index("Non-trainable params: 0") + 2
    tables = next(i for i, line in enumerate(lines) if line.startswith("Per-class results"))
    ours = lines[: summary[0]] + lines[summary[1] : tables]
    assert len(ours) <= 40, "\n".join(ours)
    assert sum(line.startswith("epoch ") for line in ours) == 8
