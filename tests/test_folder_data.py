"""ImageFolderDataModule on tiny PNG/JPEG folders written by the test, in both layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_cnn.data import DataNotFoundError, ImageFolderDataModule
from lightning_cnn.preprocessing import read_image
from tests.conftest import FOLDER_CLASSES, write_fake_image_folder


def test_class_folders_only_are_split_by_seed(tmp_path):
    write_fake_image_folder(tmp_path / "pets", per_class=10)
    write_fake_image_folder(tmp_path / "pets" / ".thumbnails", per_class=1)  # a hidden folder is no class
    dm = ImageFolderDataModule(str(tmp_path / "pets"), image_size=16, val_split=0.2, batch_size=8)
    assert dm.num_classes == 3 and dm.label_names == list(FOLDER_CLASSES) and dm.dims == (3, 16, 16)
    with pytest.warns(UserWarning, match="no test/ folder"):
        dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (24, 6)
    assert dm.test_set is dm.val_set
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    # Labels follow the colour written for the class: the dominant channel is the label.
    assert torch.equal(x.mean(dim=(2, 3)).argmax(dim=1), y)


def test_train_val_test_folders(tmp_path):
    root = tmp_path / "ds"
    write_fake_image_folder(root / "train", 6, seed=0, suffix=".jpg")
    write_fake_image_folder(root / "val", 2, seed=1)
    write_fake_image_folder(root / "test", 3, seed=2, classes=FOLDER_CLASSES[:2])  # a test set may lack a class
    dm = ImageFolderDataModule(str(root), image_size=(12, 20), grayscale=True, normalize=False, val_split=0.5)
    dm.setup("fit")
    assert dm.dims == (1, 12, 20)
    # The val folder is the validation set; val_split does not take training images away.
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 6, 6)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (1, 12, 20) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_normalize_from_weights_takes_size_and_statistics_from_the_weights(tmp_path):
    write_fake_image_folder(tmp_path / "pets", per_class=2)
    dm = ImageFolderDataModule(str(tmp_path / "pets"), normalize_from_weights="ResNet18_Weights.IMAGENET1K_V1")
    assert dm.image_size == (224, 224)
    dm_small = ImageFolderDataModule(
        str(tmp_path / "pets"), image_size=8, grayscale=True, normalize_from_weights="ResNet18_Weights.IMAGENET1K_V1"
    )
    dm_small.setup("fit")
    # Grayscale + RGB statistics: repeated to 3 channels, each standardised with its own mean/std.
    assert dm_small.dims == (3, 8, 8)
    assert dm_small.train_set.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_classes_subset(tmp_path):
    write_fake_image_folder(tmp_path / "pets", per_class=4)
    dm = ImageFolderDataModule(str(tmp_path / "pets"), image_size=8, classes=[2, 0], val_split=0.25)
    assert dm.num_classes == 2 and dm.label_names == ["fox", "cat"]
    with pytest.warns(UserWarning):
        dm.setup("fit")
    # fox (blue, original id 2) is label 0 now, cat (red) label 1.
    x, y = dm.train_set[list(range(len(dm.train_set)))]
    assert torch.equal(x.mean(dim=(2, 3))[:, [2, 0]].argmax(dim=1), y)


@pytest.mark.parametrize(
    "make,kwargs,error,match",
    [
        (lambda root: None, {"image_size": 8}, DataNotFoundError, "does not exist"),
        (lambda root: root.mkdir(), {"image_size": 8}, DataNotFoundError, "no class sub-folders"),
        (lambda root: write_fake_image_folder(root, 2), {}, ValueError, "image_size is not set"),
    ],
)
def test_bad_folders_fail_with_the_fix(tmp_path, make, kwargs, error, match):
    make(tmp_path / "ds")
    with pytest.raises(error, match=match):
        ImageFolderDataModule(str(tmp_path / "ds"), **kwargs)


def test_unknown_class_in_val_and_corrupt_image(tmp_path):
    root = tmp_path / "ds"
    write_fake_image_folder(root / "train", 2, classes=FOLDER_CLASSES[:2])
    write_fake_image_folder(root / "val", 1)
    dm = ImageFolderDataModule(str(root), image_size=8)
    with pytest.raises(ValueError, match=r"classes \['fox'\]"):
        dm.setup("fit")
    (root / "val" / "fox" / "0.png").unlink()
    (root / "val" / "fox").rmdir()
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    dm = ImageFolderDataModule(str(root), image_size=8, val_split=0)
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not readable images: .*broken\.png"):
        dm.setup("fit")
    assert len(dm.train_set) == 4  # the readable ones


def _write_unreadable(path: Path) -> None:
    """A file with an image suffix that no decoder should accept, named for what is wrong with it."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    if path.stem == "truncated":
        Image.fromarray(pixels).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif path.stem == "text":
        path.write_text("just some text\n")
    elif path.stem == "empty":
        path.write_bytes(b"")
    else:  # "bomb": more pixels than PIL's decompression-bomb limit, which the test lowers
        Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streamed"])
@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg", "text.png", "empty.jpg", "bomb.png"])
def test_an_unreadable_image_is_skipped_and_named_in_a_warning(tmp_path, monkeypatch, name, in_memory):
    root = write_fake_image_folder(tmp_path / "pets", per_class=2)
    _write_unreadable(root / "dog" / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60 * 60)  # refused above twice that: only the 100×100 image
    dm = ImageFolderDataModule(str(root), image_size=8, val_split=2, in_memory=in_memory, num_workers=0)
    with pytest.warns(UserWarning) as record:
        dm.setup("fit")
        # Streamed, a file whose header reads (a truncated one) is only found when its batch is decoded.
        labels = torch.cat([y for loader in (dm.train_dataloader(), dm.val_dataloader()) for _, y in loader])
    assert len(labels) == 6  # the 6 readable images, each once
    named = [str(w.message) for w in record if name in str(w.message)]
    assert len(named) == 1 and "\n" not in named[0], [str(w.message) for w in record]


def test_16_bit_gray_keeps_its_high_byte(tmp_path):
    # PIL alone clips 16-bit levels at 255, which turns a 16-bit scan almost white.
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 255, 256, 30000, 65535]], dtype=np.uint16)).save(path)
    expected = [0, 0, 1, 117, 255]
    assert read_image(path, grayscale=True)[0, :, 0].tolist() == expected
    assert read_image(path, grayscale=False)[0].tolist() == [[v] * 3 for v in expected]
