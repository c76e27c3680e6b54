"""Shared fixtures: tiny datasets written in the real on-disk formats (IDX for MNIST-like sets, pickled batches
for CIFAR), so the real readers are what the tests exercise, with no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_cnn.data.cifar import write_cifar_batch
from lightning_cnn.data.mnist import write_idx

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def make_class_images(rng: np.random.Generator, n: int, size: int, channels: int, num_classes: int):
    """Noisy images whose class is a bright square at a class-specific position: learnable in a few steps."""
    labels = rng.integers(0, num_classes, size=n)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    cells = int(np.ceil(np.sqrt(num_classes)))
    step = size // cells
    for i, label in enumerate(labels):
        r, c = divmod(int(label), cells)
        images[i, r * step : r * step + step // 2 + 2, c * step : c * step + step // 2 + 2] = 255
    return images, labels


def write_fake_mnist(folder: Path, n_train: int = 240, n_test: int = 60, gz: bool = True, seed: int = 0) -> Path:
    """Write the four MNIST IDX files (28×28, 10 classes) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make_class_images(rng, n, 28, 1, 10)
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images[..., 0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))
    return folder


def write_fake_cifar(folder: Path, num_classes: int = 10, n_per_batch: int = 40, seed: int = 0) -> Path:
    """Write a CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) archive folder."""
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        root, key = folder / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        root, key = folder / "cifar-100-python", "fine_labels"
        files = ["train", "test"]
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        images, labels = make_class_images(rng, n_per_batch, 32, 3, num_classes)
        write_cifar_batch(root / name, images, labels, key)
    return folder


def cli_error_line(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """Run ``cli.py`` in-process; assert it ends with exit status 2 and no traceback; return its last stderr line."""
    from lightning_cnn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err), "\n".join(err)
    return err[-1]


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_fake_mnist(tmp_path / "mnist")


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    return write_fake_cifar(tmp_path / "cifar10", 10)


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    return write_fake_cifar(tmp_path / "cifar100", 100, n_per_batch=120)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in its own folder, so default paths (./data, runs/...) never touch the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
