"""Bad and untrusted input files: refused with one line naming the file, before any code in them runs or any
training step sees a bad value. The same inputs through the command line, in a process each: test_cli_errors.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_cnn.data import CIFAR10DataModule, CorruptDataError, MNISTDataModule
from lightning_cnn.data.mnist import write_idx
from lightning_cnn.models import TorchvisionNet
from tests.conftest import CONFIGS, write_fake_cifar, write_fake_mnist


def test_real_format_cifar_batches_still_load(cifar10_dir):
    dm = CIFAR10DataModule(data_dir=str(cifar10_dir), download=False, val_split=0)
    dm.setup()
    assert len(dm.train_set) == 5 * 40 and dm.train_set.images.dtype == torch.uint8


def test_out_of_range_labels_are_refused_when_read(tmp_path):
    folder = write_fake_mnist(tmp_path / "mnist")
    labels = np.zeros(240, dtype=np.uint8)
    labels[17] = 12
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(CorruptDataError, match=r"train-labels-idx1-ubyte\.gz holds label 12, outside 0\.\.9"):
        MNISTDataModule(data_dir=str(folder), download=False).setup()


def test_out_of_range_cifar_labels_are_refused(tmp_path):
    root = write_fake_cifar(tmp_path / "cifar10", 10)
    from lightning_cnn.data.cifar import write_cifar_batch

    write_cifar_batch(
        root / "cifar-10-batches-py" / "test_batch", np.zeros((2, 32, 32, 3), np.uint8), [3, 10], "labels"
    )
    with pytest.raises(CorruptDataError, match=r"test_batch holds label 10, outside 0\.\.9"):
        CIFAR10DataModule(data_dir=str(root), download=False).setup()


@pytest.mark.parametrize("content", [b"just some text\n", b"PK\x03\x04 not really a zip"])
def test_a_weights_file_that_is_not_a_state_dict_says_so(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(Exception, match=rf"{path} is not a PyTorch checkpoint/state dict") as info:
        TorchvisionNet(arch="resnet18", input_size=(32, 32), weights=str(path))
    assert "\n" not in str(info.value)


def test_an_empty_class_folder_is_named_and_gets_no_output(tmp_path):
    from PIL import Image

    from lightning_cnn.data import ImageFolderDataModule

    for name, count in (("cat", 3), ("dog", 3), ("zebra", 0)):
        folder = tmp_path / "pets" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (10, 12), (40 * i, 90, 200)).save(folder / f"{i}.png")
    with pytest.warns(UserWarning, match=r"class folder\(s\) \['zebra'\] hold no images and are left out"):
        dm = ImageFolderDataModule(str(tmp_path / "pets"), image_size=8, val_split=2)
    assert dm.num_classes == 2 and dm.label_names == ["cat", "dog"]
    dm.setup()
    assert sorted(set(dm.train_set.labels.tolist()) | set(dm.val_set.labels.tolist())) == [0, 1]


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    from lightning_cnn.data import DataNotFoundError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("kept")

    def failing_download(self, folder: Path) -> None:
        raw = folder / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte.gz.part").write_bytes(b"\x1f\x8b partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(MNISTDataModule, "_download", failing_download)
    with pytest.raises(DataNotFoundError, match=r"downloading it failed \(OSError: network unreachable\)"):
        MNISTDataModule(data_dir=str(tmp_path / "data")).prepare_data()
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == ["mine.txt"]


def test_missing_data_names_the_files_it_looks_for(tmp_path):
    from lightning_cnn.data import DataNotFoundError

    with pytest.raises(DataNotFoundError, match=r"for train-images-idx3-ubyte\[\.gz\], train-labels-idx1-ubyte"):
        MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data()
    with pytest.raises(DataNotFoundError, match=r"for cifar-10-batches-py/\{data_batch_1,.*,test_batch\}"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=False).prepare_data()


def test_shape_probes_translate_only_size_errors():
    from lightning_cnn.models import LeNet
    from lightning_cnn.models.layers import input_too_small

    with pytest.raises(ValueError, match=r"input_size=\(8, 8\) is too small"):
        LeNet(input_size=(8, 8))
    assert not input_too_small(RuntimeError("CUDA out of memory"))
    assert input_too_small(
        RuntimeError("Given input size: (4x1x1). Calculated output size: (4x0x0). Output size is too small")
    )


def test_a_negative_rotation_range_speaks_of_degrees():
    from lightning_cnn.augmentation import KerasAugmentation

    with pytest.raises(ValueError, match=r"rotation_range=-5; use degrees >= 0"):
        KerasAugmentation(rotation_range=-5)


def test_a_typed_linked_value_that_agrees_is_accepted(in_tmp):
    from lightning_cnn.cli import CNNCLI

    data = ["--data.init_args.data_dir", str(write_fake_mnist(in_tmp / "mnist")), "--data.init_args.download", "false"]
    cli = CNNCLI(args=["--config", str(CONFIGS / "lenet_mnist.yaml"), "--model.init_args.net.init_args.in_channels",
                       "1", "--model.init_args.net.init_args.input_size", "[28, 28]", *data], run=False)  # fmt: skip
    assert cli.model.net.in_channels == 1


def test_image_folders_take_every_base_option(tmp_path, in_tmp):
    import inspect

    from jsonargparse import ArgumentParser
    from PIL import Image

    from lightning_cnn.cli import CNNCLI
    from lightning_cnn.data import ImageDataModule, ImageFolderDataModule

    # What a YAML may set: the folder's own options and, forwarded through **kwargs, every base option.
    parser = ArgumentParser()
    parser.add_class_arguments(ImageFolderDataModule, "data")
    base = set(inspect.signature(ImageDataModule.__init__).parameters) - {"self", "download"}
    assert base <= set(parser.get_defaults()["data"].keys())

    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (20, 18), (20 * i, 120 if name == "cat" else 30, 60)).save(
                tmp_path / "pets" / name / f"{i}.png"
            )
    for mode in ("batched", "per_sample"):
        cli = CNNCLI(args=["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--trainer",
                           str(CONFIGS / "trainer" / "smoke.yaml"), "--data", "lightning_cnn.data.ImageFolderDataModule",
                           "--data.init_args.data_dir", str(tmp_path / "pets"), "--data.init_args.image_size", "16",
                           "--data.init_args.val_split", "4", "--data.init_args.global_batch_size", "8",
                           "--data.init_args.augmentation", "lightning_cnn.augmentation.KerasAugmentation",
                           "--data.init_args.augmentation.init_args.rotation_range", "10",
                           "--data.init_args.augmentation.init_args.mode", mode])  # fmt: skip
        assert cli.trainer.state.finished and cli.datamodule.per_process_batch_size(1) == 8
        assert cli.datamodule.augmentation is not None
