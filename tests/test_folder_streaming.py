"""ImageFolderDataModule streaming its images from their files (``in_memory: false``, or ``auto`` over a share of
RAM): the same batches as in memory, unreadable files skipped with a warning, and an exact resume mid-epoch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_cnn.cli import CNNCLI
from lightning_cnn.data import CorruptDataError, ImageFolderDataModule
from lightning_cnn.data import folder as folder_module
from lightning_cnn.data.dataset import ImageFileDataset
from tests.conftest import CONFIGS, write_fake_image_folder
from tests.test_ddp import GLOBAL_BATCH, assert_same_weights, final_weights, run_cli, write_experiment
from tests.test_resume import KillAtStep, Killed, _callback

AUGMENTATION = {
    "class_path": "lightning_cnn.augmentation.KerasAugmentation",
    "init_args": {"rotation_range": 15, "width_shift_range": 0.1, "horizontal_flip": True, "mode": "per_sample"},
}


def _datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    options = dict(image_size=16, val_split=0.25, batch_size=5, num_workers=0, seed=3)
    return ImageFolderDataModule(str(root), **{**options, **kwargs})


def _epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "per_sample_augmentation"])
def test_streamed_batches_equal_the_in_memory_ones(tmp_path, augment):
    root = tmp_path / "ds"
    write_fake_image_folder(root / "train", per_class=8, seed=0, suffix=".jpg")
    write_fake_image_folder(root / "test", per_class=3, seed=1)
    loaders = {}
    for in_memory in (True, False):
        augmentation = None
        if augment:
            from lightning_cnn.augmentation import KerasAugmentation

            augmentation = KerasAugmentation(**AUGMENTATION["init_args"], seed=11)
        dm = _datamodule(root, in_memory=in_memory, classes=[2, 0], augmentation=augmentation)
        dm.setup("fit")
        assert dm.streaming is (not in_memory)
        assert isinstance(dm.train_set, ImageFileDataset) is (not in_memory)
        loaders[in_memory] = dm
    memory, streamed = loaders[True], loaders[False]
    assert (len(streamed.train_set), len(streamed.val_set), len(streamed.test_set)) == (12, 4, 6)
    for epoch in range(2):  # a new order (and new augmentation draws) each epoch, alike in both
        pair = [dm.train_dataloader() for dm in (memory, streamed)]
        for loader in pair:
            loader.sampler.set_epoch(epoch)
        _assert_same_batches(*(_epoch(loader) for loader in pair))
    _assert_same_batches(_epoch(memory.val_dataloader()), _epoch(streamed.val_dataloader()))
    _assert_same_batches(_epoch(memory.test_dataloader()), _epoch(streamed.test_dataloader()))


def test_streamed_batches_come_from_loader_workers(tmp_path):
    root = write_fake_image_folder(tmp_path / "ds", per_class=6)
    dm = _datamodule(root, in_memory=False, num_workers=None)
    with pytest.warns(UserWarning, match="no test/ folder"):
        dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers >= 1  # decoding is the loader's work, not the training process'
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(dm.train_set.labels.tolist())  # each training image once per epoch


def test_auto_streams_when_the_images_would_take_more_than_the_memory_share(tmp_path, monkeypatch):
    root = write_fake_image_folder(tmp_path / "ds", per_class=4)  # 12 images, 16x16 RGB: 9,216 bytes decoded
    monkeypatch.setattr(folder_module, "_ram_bytes", lambda: 100_000)
    small = _datamodule(root, memory_share=0.5)  # 50,000 bytes allowed
    large = _datamodule(root, memory_share=0.05)  # 5,000 bytes allowed
    for dm in (small, large):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no test/ folder"
            dm.setup("fit")
    assert small.streaming is False and large.streaming is True
    assert isinstance(large.train_set, ImageFileDataset)


@pytest.mark.parametrize("option,value", [("in_memory", "sometimes"), ("memory_share", 0.0), ("memory_share", 2)])
def test_bad_streaming_options_name_the_value(tmp_path, option, value):
    root = write_fake_image_folder(tmp_path / "ds", per_class=2)
    with pytest.raises(ValueError, match=rf"{option}={value!r}"):
        _datamodule(root, **{option: value})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_unreadable_files_are_skipped_with_one_warning_never_a_crash(tmp_path):
    root = tmp_path / "ds"
    write_fake_image_folder(root / "train", per_class=6, suffix=".jpg")
    write_fake_image_folder(root / "test", per_class=2)
    (root / "train" / "dog" / "text.jpg").write_text("not an image")  # its header does not read: left out at setup
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    big = np.random.default_rng(0).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "train" / "fox" / "cut.jpg", quality=95)
    _truncate(root / "train" / "fox" / "cut.jpg")  # header fine, pixels missing: found when its batch is decoded
    dm = _datamodule(root, in_memory=False, val_split=0)
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\).*(text\.jpg|empty\.png)") as record:
        dm.setup("fit")
    assert len([w for w in record if "skipped" in str(w.message)]) == 1
    assert len(dm.train_set) == 19  # 18 good images + the truncated one, which only decoding finds out
    with pytest.warns(
        UserWarning, match=r"cut\.jpg \(image file is truncated.*\): cannot be read as an image; skipped"
    ) as record:
        seen = sum(len(y) for _, y in dm.train_dataloader())
        seen_again = sum(len(y) for _, y in dm.train_dataloader())
    assert seen == seen_again == 18  # every epoch runs to its end, one image short
    assert len([w for w in record if "cut.jpg" in str(w.message)]) == 1  # once per process


def test_in_memory_also_skips_unreadable_files_with_one_warning(tmp_path):
    root = write_fake_image_folder(tmp_path / "ds", per_class=4, suffix=".jpg")
    (root / "dog" / "text.jpg").write_text("not an image")
    big = np.random.default_rng(0).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "fox" / "cut.jpg", quality=95)
    _truncate(root / "fox" / "cut.jpg")
    dm = _datamodule(root, in_memory=True, val_split=0.25)
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\)"):
        dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 12


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_folder_of_nothing_but_unreadable_files_is_one_error(tmp_path, in_memory):
    root = tmp_path / "ds"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "a.png").write_text("not an image")
    dm = _datamodule(root, in_memory=in_memory)
    with warnings.catch_warnings(), pytest.raises(CorruptDataError, match=r"none of the 2 image files in .* read"):
        warnings.simplefilter("ignore")
        dm.setup("fit")


def _fit(folder: Path, monkeypatch, data_dir: Path, *args: str, callbacks=None) -> CNNCLI:
    """``cli.py fit`` of a LeNet with dropout on a streamed grayscale image folder, in two loader workers with
    per-sample augmentation: every random generator a resume has to restore is in use."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    config = write_experiment(folder, data_dir, max_epochs=2, dense_dropout=0.3, callbacks=callbacks)
    document = yaml.safe_load(config.read_text())
    document["test_after_fit"] = False
    document["data"] = {
        "class_path": "lightning_cnn.data.ImageFolderDataModule",
        "init_args": {"data_dir": str(data_dir), "image_size": 28, "grayscale": True, "in_memory": False,
                      "batch_size": 8, "val_split": 8, "num_workers": 2, "augmentation": AUGMENTATION},
    }  # fmt: skip
    config.write_text(yaml.safe_dump(document))
    return CNNCLI(args=["fit", "--config", str(config), *args])


def test_streamed_resume_mid_epoch_is_exact(tmp_path, monkeypatch):
    data_dir = write_fake_image_folder(tmp_path / "ds", per_class=16, suffix=".jpg")  # 40 training images: 5 steps
    args = ["--resume_checkpoint.every_n_train_steps", "3"]
    reference = _fit(tmp_path / "full", monkeypatch, data_dir, *args)
    with pytest.raises(Killed):  # stopped at epoch 1, batch 2, two steps after the step-6 checkpoint
        _fit(tmp_path / "killed", monkeypatch, data_dir, *args, callbacks=[_callback(KillAtStep, step=8)])
    resumed = _fit(tmp_path / "killed", monkeypatch, data_dir, *args, "--ckpt_path", "last")
    assert resumed.trainer.global_step == reference.trainer.global_step == 10
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


@pytest.mark.multiprocess
def test_streamed_two_process_ddp_trains_the_one_process_model(tmp_path):
    # Each rank decodes only its share of every global batch; together they are the one-process batch.
    data_dir = write_fake_image_folder(tmp_path / "ds", per_class=16, suffix=".jpg")
    runs = {}
    for name, trainer in (("one", ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]),
                          ("two", ["--trainer", str(CONFIGS / "trainer" / "ddp_cpu.yaml")])):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        config = write_experiment(folder, data_dir, max_epochs=2)
        document = yaml.safe_load(config.read_text())
        document["data"] = {
            "class_path": "lightning_cnn.data.ImageFolderDataModule",
            "init_args": {"data_dir": str(data_dir), "image_size": 28, "grayscale": True, "in_memory": False,
                          "global_batch_size": GLOBAL_BATCH // 4, "val_split": 8, "num_workers": 1},
        }  # fmt: skip
        config.write_text(yaml.safe_dump(document))
        run_cli(folder, "fit", "--config", str(config), *trainer)
        runs[name] = final_weights(folder)
    assert_same_weights(runs["two"], runs["one"], atol=1e-5)


def test_workers_that_decode_files_start_from_a_forkserver_and_in_memory_ones_fork(tmp_path):
    # A fork while another thread of the process ends can deadlock the new worker on Python < 3.11.8 (CPython
    # gh-112275): file-decoding loaders, whose datasets are cheap to send, start their workers from a forkserver.
    from lightning_cnn.data.sampling import loader_options

    root = write_fake_image_folder(tmp_path / "ds", per_class=4)
    streamed = _datamodule(root, in_memory=False, val_split=0.25, num_workers=1)
    streamed.setup("fit")
    in_memory = _datamodule(root, in_memory=True, val_split=0.25, num_workers=1)
    in_memory.setup("fit")
    assert loader_options(streamed.val_set, 1, None, False)["multiprocessing_context"] == "forkserver"
    assert loader_options(streamed.val_set, 0, None, False)["multiprocessing_context"] is None  # no workers
    assert loader_options(in_memory.val_set, 1, None, False)["multiprocessing_context"] is None
    batch = next(iter(streamed.val_dataloader()))  # a worker started that way reads the files
    assert batch[0].shape[0] == len(batch[1]) > 0
