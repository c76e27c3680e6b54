"""Datamodules read tiny files written in the real formats; splits are seeded and reproducible."""

from __future__ import annotations

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_cnn.data import (
    DATAMODULES,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptDataError,
    DataNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from lightning_cnn.data.mnist import read_idx, write_idx
from tests.conftest import FAKE_DATA, FASHION_MNIST_SYSTEM_DIR, fake_data_writer, make_datamodule, write_fake_mnist


def _ready(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    assert np.array_equal(read_idx(path), array)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 2


def test_mnist_reads_idx_files(mnist_dir):
    dm = _ready(MNISTDataModule(data_dir=str(mnist_dir), val_split=0.25, batch_size=16))
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (180, 60, 60)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.dims == (1, 28, 28) and dm.num_classes == 10


def test_mnist_reads_plain_files_in_torchvision_layout(tmp_path):
    write_fake_mnist(tmp_path / "MNIST" / "raw", gz=False)
    dm = _ready(MNISTDataModule(data_dir=str(tmp_path), download=False))
    assert len(dm.test_set) == 60


def test_normalization_uses_the_class_table(mnist_dir):
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:8].astype(np.float32) / 255
    plain = _ready(MNISTDataModule(data_dir=str(mnist_dir), normalize=False))
    normed = _ready(MNISTDataModule(data_dir=str(mnist_dir), normalize=True))
    x_plain, _ = plain.test_set.__getitems__(list(range(8)))
    x_norm, _ = normed.test_set.__getitems__(list(range(8)))
    assert np.allclose(x_plain[:, 0].numpy(), raw)
    assert np.allclose(x_norm[:, 0].numpy(), (raw - MNISTDataModule.mean[0]) / MNISTDataModule.std[0], atol=1e-6)


@pytest.mark.parametrize("num_classes,fixture", [(10, "cifar10_dir"), (100, "cifar100_dir")])
def test_cifar_reads_pickled_batches(request, num_classes, fixture):
    folder = request.getfixturevalue(fixture)
    cls = CIFAR10DataModule if num_classes == 10 else CIFAR100DataModule
    dm = _ready(cls(data_dir=str(folder), val_split=0, normalize=False, batch_size=8))
    assert dm.val_set is None and dm.val_dataloader() == []
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 3, 32, 32) and dm.num_classes == num_classes
    # Pixel layout: the pickled row is 1024 R, 1024 G, 1024 B values, row-major.
    from lightning_cnn.data.cifar import read_cifar_batch

    name = "cifar-10-batches-py/test_batch" if num_classes == 10 else "cifar-100-python/test"
    arrays = read_cifar_batch(folder / name, "labels" if num_classes == 10 else "fine_labels")
    assert torch.allclose(x[0], torch.from_numpy(arrays.images[0]).permute(2, 0, 1).float() / 255)


def test_split_is_seeded_and_reproducible(mnist_dir):
    def val_labels(seed):
        dm = _ready(MNISTDataModule(data_dir=str(mnist_dir), val_split=40, seed=seed))
        return dm.val_set.labels.clone(), dm.val_set.images.clone()

    a, b, c = val_labels(1), val_labels(1), val_labels(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert len(a[0]) == 40


def test_keras_last_split_takes_the_tail(mnist_dir):
    dm = _ready(MNISTDataModule(data_dir=str(mnist_dir), val_split=0.2, val_split_mode="last", normalize=False))
    images = read_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    assert torch.equal(dm.val_set.images[:, 0], torch.from_numpy(images[-48:]))


# Validation rows of Keras 3's model.fit(validation_split=s) for n training rows, computed once with Keras 3.15.1
# (keras.src.trainers.data_adapters.array_slicing.train_validation_split); a column per s in KERAS_SPLITS.
KERAS_SPLITS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.33, 0.5)
KERAS_VALIDATION_ROWS = {
    7: [1, 1, 2, 2, 2, 3, 3, 4],
    10: [1, 1, 2, 2, 3, 3, 4, 5],
    11: [1, 2, 2, 3, 3, 4, 4, 6],
    100: [5, 10, 15, 20, 25, 30, 33, 50],
    999: [50, 100, 150, 200, 250, 300, 330, 500],
    1000: [50, 100, 150, 200, 250, 300, 331, 500],
    12345: [618, 1235, 1852, 2469, 3087, 3704, 4074, 6173],
    50000: [2500, 5000, 7500, 10000, 12500, 15000, 16500, 25000],
    54000: [2700, 5400, 8100, 10800, 13500, 16200, 17821, 27000],
    60000: [3000, 6000, 9000, 12000, 15000, 18000, 19801, 30000],
}


def test_the_last_split_takes_exactly_keras_rows(mnist_dir):
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_split_mode="last")
    for n, counts in KERAS_VALIDATION_ROWS.items():
        for split, expected in zip(KERAS_SPLITS, counts):
            train_idx, val_idx = dm._split_indices(n, split)
            assert len(val_idx) == expected, (n, split)
            assert val_idx.tolist() == list(range(n - expected, n)) and train_idx.tolist() == list(range(n - expected))
    with pytest.raises(ValueError, match="val_split=0.99 of 50 samples leaves no training sample"):
        dm._split_indices(50, 0.99)  # floor(0.5) = 0 training rows: Keras refuses it too


def test_setup_twice_keeps_the_same_split(mnist_dir):
    dm = _ready(MNISTDataModule(data_dir=str(mnist_dir)))
    first = dm.train_set
    dm.setup("test")
    assert dm.train_set is first


def test_classes_subset_resize_rgb_and_train_size(mnist_dir, monkeypatch):
    monkeypatch.setattr(MNISTDataModule, "enlarge_in_memory_up_to", 0)  # as for a dataset too large to enlarge
    dm = _ready(
        MNISTDataModule(
            data_dir=str(mnist_dir), classes=[7, 3], image_size=64, to_rgb=True, train_size=10, val_split=0.1
        )
    )
    assert dm.num_classes == 2 and dm.dims == (3, 64, 64) and dm.label_names == ["7", "3"]
    assert len(dm.train_set) == 10
    x, y = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    assert x.shape[1:] == (3, 28, 28), "enlarged per batch on the device, not in memory"
    x, y = dm.on_after_batch_transfer((x, y), 0)
    assert x.shape[1:] == (3, 64, 64) and set(y.tolist()) <= {0, 1}
    assert torch.equal(x[:, 0], x[:, 2])
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert len(y) == int(np.isin(labels, [7, 3]).sum())
    assert (y == 0).sum().item() == int((labels == 7).sum())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"val_split": 1.5}, "val_split=1.5"),
        ({"val_split": -1}, "val_split=-1"),
        ({"classes": [3]}, r"classes=\[3\]"),
        ({"classes": [0, 10]}, r"classes=\[0, 10\]"),
        ({"image_size": 0}, "image_size=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"train_size": 0}, "train_size=0"),
    ],
)
def test_bad_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(**kwargs)


def test_missing_data_offline_names_the_options(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataNotFoundError, match="data.data_dir") as err:
        dm.prepare_data()
    assert "download" in str(err.value) and "FashionMNIST" in str(err.value)


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    def offline(self, folder):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(MNISTDataModule, "_download", offline)
    with pytest.raises(DataNotFoundError, match="downloading it failed"):
        MNISTDataModule(data_dir=str(tmp_path)).prepare_data()


def test_truncated_idx_is_a_clear_error(mnist_dir):
    path = mnist_dir / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz declares shape"):
        _ready(MNISTDataModule(data_dir=str(mnist_dir)))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(CorruptDataError, match="cannot be read"):
        _ready(MNISTDataModule(data_dir=str(mnist_dir)))


def test_corrupt_cifar_pickle_is_a_clear_error(cifar10_dir):
    path = cifar10_dir / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        _ready(CIFAR10DataModule(data_dir=str(cifar10_dir)))


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_falls_back_to_the_system_copy(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "nothing-here"), download=False)
    assert dm.locate() == FASHION_MNIST_SYSTEM_DIR
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 60_000 and len(dm.test_set) == 10_000


def test_data_dir_wins_over_the_system_copy(tmp_path):
    write_fake_mnist(tmp_path)
    assert FashionMNISTDataModule(data_dir=str(tmp_path)).locate() == tmp_path


def test_every_datamodule_has_a_fake_data_writer():
    # Without one, a new dataset would escape every sweep that builds datamodules from fake files.
    for name in DATAMODULES:
        fake_data_writer(name)  # KeyError naming the datamodule and where to add its writer
    assert set(FAKE_DATA) <= set(DATAMODULES), "FAKE_DATA names a datamodule that is not registered"


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_every_datamodule_builds_from_its_real_format(tmp_path, name):
    dm = _ready(make_datamodule(name, tmp_path, batch_size=4))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, *dm.dims) and len(dm.class_names) == dm.num_classes
    assert isinstance(dm.locate(), Path)


def test_concurrent_downloads_into_one_shared_folder_are_safe(tmp_path, monkeypatch):
    # Two nodes' local rank 0 download into the same data_dir at the same time (both inside _download at once).
    import threading

    both_downloading = threading.Barrier(2, timeout=600)
    seen_partial = []

    def slow_download(self, folder: Path) -> None:
        raw = folder / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")  # half-way, as a download is
        both_downloading.wait()
        # What the other process can see of the shared folder meanwhile: no dataset folder yet.
        seen_partial.append((tmp_path / "data" / "MNIST").exists())
        write_fake_mnist(raw, seed=len(seen_partial))

    monkeypatch.setattr(MNISTDataModule, "_download", slow_download)
    modules = [MNISTDataModule(data_dir=str(tmp_path / "data")) for _ in range(2)]
    threads = [threading.Thread(target=m.prepare_data) for m in modules]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen_partial == [False, False]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["MNIST"]  # no private folders left
    for m in modules:
        m.setup()
        assert len(m.train_set) + len(m.val_set) == 240  # whole files, from one of the two downloads


@pytest.mark.parametrize("augment", [False, True], ids=["on the device", "before per-sample augmentation"])
def test_enlarged_batches_equal_images_resized_in_memory(mnist_dir, augment, monkeypatch):
    from lightning_cnn.preprocessing import normalize_uint8, resize_uint8

    small = _ready(MNISTDataModule(data_dir=str(mnist_dir), image_size=(40, 36), val_split=0))
    assert small.train_set.images.shape[-2:] == (40, 36)  # small enough: enlarged once, in memory
    monkeypatch.setattr(MNISTDataModule, "enlarge_in_memory_up_to", 0)  # as for a dataset too large to enlarge
    dm = _ready(MNISTDataModule(data_dir=str(mnist_dir), image_size=(40, 36), val_split=0))
    assert dm.train_set.images.shape[-2:] == (28, 28)  # memory: the stored size
    if augment:  # an identity pipeline: the per-sample path resizes in the loader, before augmenting
        from lightning_cnn.augmentation import AlbumentationsAugmentation

        dm.train_set.transform = AlbumentationsAugmentation([]).per_sample_transform(seed=0)
    indices = list(range(16))
    x, y = dm.on_after_batch_transfer(dm.train_set.__getitems__(indices), 0)
    expected = normalize_uint8(
        resize_uint8(dm.train_set.images[indices], (40, 36)), dm.train_set.mean, dm.train_set.std
    )
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
