"""The speed benchmarks run as the README shows them: our side of benchmarks/keras_parity.py (a real ``cli.py fit``
with the flags it passes), the optimizer settings it hands to Keras (read from the configs), and
benchmarks/speed_options.py on IDX files in the real format. The Keras side needs Keras and TensorFlow, which are
never installed with the package; its figures are in the README."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO_ROOT, write_fake_mnist

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
keras_parity = pytest.importorskip("keras_parity")
speed_options = pytest.importorskip("speed_options")


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


def test_speed_options_prints_a_row_per_variant(tmp_path, monkeypatch, capsys):
    data = write_fake_mnist(tmp_path / "data", n_train=2100, n_test=40)
    variants = ["torch defaults", "+ channels_last (default)"]
    argv = ["speed_options.py", "--models", "lenet", "--rounds", "1", "--steps", "2", "--warmup", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--batch-size", "16", "--data-dir", str(data), "--variants", *variants])
    speed_options.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| torch defaults") or line.startswith("| + chan")]
    assert len(rows) == 2 and "| 1.00 (1.00–1.00) |" in rows[0]
