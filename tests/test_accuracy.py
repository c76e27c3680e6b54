"""Real-data accuracy: the quick-start config trains the slides' LeNet on the genuine Fashion-MNIST."""

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
