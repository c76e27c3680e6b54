"""Real-data accuracy on the genuine Fashion-MNIST: the quick-start LeNet, and the functional-API CNN on a binary task."""

from __future__ import annotations

import time

import pytest

from lightning_cnn.cli import CNNCLI
from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not FASHION_MNIST_SYSTEM_DIR.is_dir(),
        reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist; `make test` does it as root)",
    ),
]


def test_lenet_reaches_85_percent_on_fashion_mnist(in_tmp):
    start = time.perf_counter()
    cli = CNNCLI(
        args=["fit", "--config", str(CONFIGS / "lenet_fashion_mnist.yaml"), "--trainer.enable_progress_bar", "false"]
    )
    seconds = time.perf_counter() - start
    accuracy = float(cli.trainer.callback_metrics["test/acc"])
    epochs = cli.trainer.current_epoch
    print(f"LeNet on Fashion-MNIST: test accuracy {accuracy:.4f} after {epochs} epochs, {seconds / epochs:.1f} s/epoch")
    assert accuracy >= 0.85


def test_functional_cnn_separates_sneakers_from_ankle_boots(in_tmp):
    cli = CNNCLI(
        args=["fit", "--config", str(CONFIGS / "functional_cnn_binary.yaml"), "--trainer.enable_progress_bar", "false"]
    )
    accuracy = float(cli.trainer.callback_metrics["test/acc"])
    print(f"FunctionalCNN, Sneaker vs Ankle boot at 64×64: test accuracy {accuracy:.4f}")
    assert cli.model.binary and accuracy >= 0.93
