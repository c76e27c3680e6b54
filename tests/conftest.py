"""Shared fixtures: tiny datasets written in the real on-disk formats (IDX for MNIST-like sets, pickled batches
for CIFAR, image files in class folders), so the real readers are what the tests exercise, with no network.

:data:`FAKE_DATA` holds one writer per registered datamodule; :func:`make_datamodule` and
:func:`fake_datamodule_kwargs` build any of them by registry name, for the sweeps over ``DATAMODULES``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# The README's worked examples ("a new architecture or dataset is one file and one YAML") register themselves, so
# every registry sweep covers them too.
import examples.extending.kmnist  # noqa: F401
import examples.extending.tiny_vgg  # noqa: F401
from lightning_cnn.data import DATAMODULES, ImageDataModule
from lightning_cnn.data.cifar import write_cifar_batch
from lightning_cnn.data.mnist import write_idx

# pytest-xdist workers share the cores: one torch thread per worker each, not one per core each, whose waiting
# threads would take turns on the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_script(path: Path, name: str):
    """Import a script of scripts/ (not a package) as a module named ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


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


#: Class folders :func:`write_fake_image_folder` writes; the class's colour channel is its index modulo 3.
FOLDER_CLASSES = ("cat", "dog", "fox")


def write_fake_image_folder(
    root: Path, per_class: int, seed: int = 0, suffix: str = ".png", classes: tuple[str, ...] = FOLDER_CLASSES
) -> Path:
    """Write one sub-folder of images per class into ``root``: varying sizes, the class's colour channel bright
    (cat red, dog green, fox blue), and a ``notes.txt`` beside the first class's images that readers must skip."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(20, 60, size=2)
            pixels = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
            pixels[..., label % 3] = 220
            Image.fromarray(pixels).save(folder / f"{i}{suffix}")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def _image_folder_data(folder: Path) -> dict[str, Any]:
    write_fake_image_folder(folder / "train", per_class=16, seed=0)
    write_fake_image_folder(folder / "test", per_class=4, seed=1, suffix=".jpg")
    return {"data_dir": str(folder)}


def _shard_data(folder: Path) -> dict[str, Any]:
    from lightning_cnn.data import MNISTDataModule, write_shards

    source = MNISTDataModule(data_dir=str(write_fake_mnist(folder / "mnist")), download=False, val_split=40)
    return {"data_dir": str(write_shards(source, folder / "shards", num_workers=1))}


#: Registry name → a writer of tiny fake data in that datamodule's real format into a folder, returning the
#: constructor arguments that read it. A datamodule registered without a writer here fails
#: ``tests/test_data.py::test_every_datamodule_has_a_fake_data_writer``.
FAKE_DATA: dict[str, Callable[[Path], dict[str, Any]]] = {
    "mnist": lambda folder: {"data_dir": str(write_fake_mnist(folder))},
    "fashion_mnist": lambda folder: {"data_dir": str(write_fake_mnist(folder))},
    "cifar10": lambda folder: {"data_dir": str(write_fake_cifar(folder, 10))},
    "cifar100": lambda folder: {"data_dir": str(write_fake_cifar(folder, 100, n_per_batch=120))},
    "image_folder": _image_folder_data,
    "shards": _shard_data,
}


def fake_data_writer(name: str) -> Callable[[Path], dict[str, Any]]:
    """The writer for the datamodule registered as ``name``: its own in :data:`FAKE_DATA`, else that of the nearest
    registered class it derives from (a new dataset in MNIST's format is read from fake IDX files, like MNIST).

    Raises:
        KeyError: If neither the class nor any registered base class has a writer.
    """
    registered = {cls: key for key, cls in DATAMODULES.items()}
    for cls in DATAMODULES[name].__mro__:
        if registered.get(cls) in FAKE_DATA:
            return FAKE_DATA[registered[cls]]
    raise KeyError(f"no fake-data writer for datamodule {name!r}; add one to FAKE_DATA in tests/conftest.py.")


def fake_datamodule_kwargs(name: str, folder: Path, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of the datamodule registered as ``name``, reading fake data written into ``folder``.

    The registry's offline example (``download=False``, ``image_size``…), then the fake data's own arguments
    (``data_dir``), then ``overrides``. As ``--data.init_args.<key> <value>`` pairs they serve a CLI run too.

    Raises:
        KeyError: If ``name`` is not registered, or :data:`FAKE_DATA` has no writer for it.
    """
    return {**DATAMODULES.example(name), **fake_data_writer(name)(folder), **overrides}


def make_datamodule(name: str, folder: Path, **overrides: Any) -> ImageDataModule:
    """The datamodule registered as ``name``, built on fake data in its real format written into ``folder``
    (see :func:`fake_datamodule_kwargs`), e.g. ``make_datamodule("cifar10", tmp_path, batch_size=4)``."""
    return DATAMODULES[name](**fake_datamodule_kwargs(name, folder, **overrides))


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


@pytest.fixture
def small_disk(tmp_path: Path):
    """``small_disk(size)``: a tmpfs of ``size`` ("128k", "1m") mounted in the test's folder, a real disk that fills
    up (root only; skipped where mounting is not allowed); unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=False)
