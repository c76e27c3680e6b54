"""LitData shards: ``cli.py optimize`` writes a datamodule's splits, ``ShardedDataModule`` trains from them.

The fake MNIST here writes each training image's own index into its first two pixels, so every test can tell
which samples a batch holds: each sample once per epoch (in one process, in loader workers, over two DDP ranks),
and the rest of the epoch after a resume.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

pytest.importorskip("litdata", reason="LitData is the optional [stream] extra: pip install -e .[stream]")

from lightning_cnn.cli import CNNCLI  # noqa: E402
from lightning_cnn.data import (  # noqa: E402
    CorruptDataError,
    DataNotFoundError,
    ImageFolderDataModule,
    MNISTDataModule,
    ShardedDataModule,
    write_shards,
)
from lightning_cnn.data.mnist import write_idx  # noqa: E402
from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR, REPO_ROOT, cli_error_line, write_fake_image_folder  # noqa: E402
from tests.test_ddp import assert_same_weights, run_cli, write_experiment  # noqa: E402
from tests.test_resume import KillAtStep, Killed, _callback  # noqa: E402

N_TRAIN, N_VAL, N_TEST = 96, 32, 24


def write_indexed_mnist(folder: Path) -> Path:
    """MNIST IDX files whose image ``i`` holds ``i % 256`` and ``i // 256`` in its first two pixels (label
    ``i % 10``); the test split's indices start at 1000."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, first in (("train", N_TRAIN + N_VAL, 0), ("t10k", N_TEST, 1000)):
        index = np.arange(first, first + n)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0], images[:, 0, 1] = index % 256, index // 256
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", (index % 10).astype(np.uint8))
    return folder


def sample_ids(images: torch.Tensor) -> list[int]:
    """The indices written by :func:`write_indexed_mnist`, read back from an unnormalized batch."""
    pixels = (images[:, 0, 0, :2] * 255).round().long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def _source(mnist: Path, **kwargs) -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(mnist), download=False, val_split=N_VAL, seed=5, **kwargs)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    return write_shards(_source(write_indexed_mnist(folder / "mnist")), folder / "out", num_workers=2)


def _train_ids(source: MNISTDataModule) -> list[int]:
    source.setup("fit")
    return sorted(sample_ids(source.train_set.images.float() / 255))


def test_optimize_writes_each_split_and_describes_it(shards):
    meta = json.loads((shards / "lightning_cnn.json").read_text())
    assert meta["splits"] == {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    assert meta["class_names"] == list(MNISTDataModule.class_names) and meta["image_size"] == [28, 28]
    for split in ("train", "val", "test"):
        formats = json.loads((shards / split / "index.json").read_text())["config"]["data_format"]
        assert sorted(formats) == ["int", "int", "numpy"]


def test_evaluation_batches_equal_the_source_datamodule(shards, tmp_path):
    source = _source(write_indexed_mnist(tmp_path / "mnist"), batch_size=10)
    source.setup("fit")
    sharded = ShardedDataModule(str(shards), batch_size=10, num_workers=0)
    sharded.setup("fit")
    for ours, theirs in ((sharded.val_dataloader(), source.val_dataloader()),
                         (sharded.test_dataloader(), source.test_dataloader())):  # fmt: skip
        pairs = list(zip(ours, theirs, strict=True))
        assert pairs
        for (x, y), (x_ref, y_ref) in pairs:
            torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
            assert torch.equal(y, y_ref)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_training_sample_once_per_epoch_in_a_new_seeded_order(shards, tmp_path, workers):
    expected = _train_ids(_source(write_indexed_mnist(tmp_path / "mnist")))

    def epochs(seed: int, count: int) -> list[list[int]]:
        dm = ShardedDataModule(str(shards), batch_size=8, num_workers=workers, normalize=False, seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [[i for x, _ in loader for i in sample_ids(x)] for _ in range(count)]

    first, second = epochs(seed=3, count=2)
    assert sorted(first) == sorted(second) == expected
    assert first != second  # reshuffled each epoch
    assert epochs(seed=3, count=1)[0] == first  # the seed fixes the order
    assert epochs(seed=4, count=1)[0] != first


def test_an_image_folder_keeps_its_files_bytes_and_decodes_as_streamed(tmp_path):
    write_fake_image_folder(tmp_path / "pets" / "train", per_class=8, suffix=".jpg")
    write_fake_image_folder(tmp_path / "pets" / "test", per_class=3, seed=1, suffix=".jpg")
    folder = ImageFolderDataModule(str(tmp_path / "pets"), image_size=24, val_split=6, batch_size=5, in_memory=False)
    out = write_shards(folder, tmp_path / "shards", num_workers=1)
    assert json.loads((out / "train" / "index.json").read_text())["config"]["data_format"].count("bytes") == 1
    sharded = ShardedDataModule(str(out), batch_size=5, num_workers=0)
    sharded.setup("fit")
    assert sharded.dims == folder.dims and sharded.label_names == folder.label_names
    for ours, theirs in ((sharded.val_dataloader(), folder.val_dataloader()),
                         (sharded.test_dataloader(), folder.test_dataloader())):  # fmt: skip
        for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
            torch.testing.assert_close(x, x_ref, rtol=0, atol=0)
            assert torch.equal(y, y_ref)


def test_a_damaged_image_costs_its_sample_with_one_warning(tmp_path):
    root = write_fake_image_folder(tmp_path / "pets", per_class=6, suffix=".jpg")
    folder = ImageFolderDataModule(str(root), image_size=16, val_split=0.2, in_memory=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's own note: no test/ folder
        folder.setup("fit")
    damaged = Path(folder.train_set.paths[3])
    damaged.write_bytes(damaged.read_bytes()[:200])  # the header reads, the pixels do not
    out = write_shards(folder, tmp_path / "shards", num_workers=1)
    sharded = ShardedDataModule(str(out), batch_size=4, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no test split
        sharded.setup("fit")
    with pytest.warns(UserWarning, match="cannot be read as an image") as caught:
        seen = [len(y) for _ in range(2) for _, y in sharded.train_dataloader()]
    assert sum(seen) == 2 * (len(folder.train_set) - 1)  # both epochs, all but the damaged image
    assert sum("cannot be read" in str(w.message) for w in caught) == 1


def test_shards_declaring_pickled_samples_are_refused(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    index = copy / "train" / "index.json"
    document = json.loads(index.read_text())
    document["config"]["data_format"] = ["int", "int", "pickle"]
    index.write_text(json.dumps(document))
    dm = ShardedDataModule(str(copy))
    with pytest.raises(CorruptDataError, match=r"index\.json declares sample format\(s\) \['pickle'\]"):
        dm.setup("fit")


def test_pickle_is_never_a_reader_the_stream_can_use():
    from lightning_cnn.data.streaming import _safe_serializers

    serializers = _safe_serializers()
    assert "pickle" in serializers and {"int", "bytes", "numpy"}.isdisjoint(serializers)
    with pytest.raises(CorruptDataError, match="refused"):
        serializers["pickle"].deserialize(b"\x80\x04N.")


def test_a_folder_without_a_description_says_how_to_write_one(tmp_path):
    with pytest.raises(DataNotFoundError, match="cli.py optimize"):
        ShardedDataModule(str(tmp_path))
    (tmp_path / "lightning_cnn.json").write_text('{"format": 99}')
    with pytest.raises(CorruptDataError, match="not a lightning_cnn shard description"):
        ShardedDataModule(str(tmp_path))


def _mnist_data_config(folder: Path, mnist: Path) -> Path:
    config = folder / "data.yaml"
    config.write_text(yaml.safe_dump({
        "class_path": "lightning_cnn.data.MNISTDataModule",
        "init_args": {"data_dir": str(mnist), "download": False, "val_split": N_VAL},
    }))  # fmt: skip
    return config


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda chunk: chunk.write_bytes(os.urandom(chunk.stat().st_size)), "its header counts"),
        (lambda chunk: chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2]), "(truncated or replaced)"),
        (lambda chunk: chunk.unlink(), "it is missing"),
    ],
    ids=["random-bytes", "truncated", "missing"],
)
def test_a_damaged_chunk_file_is_named_in_one_line(shards, in_tmp, capsys, damage, expected):
    copy = in_tmp / "shards"
    shutil.copytree(shards, copy)
    chunk = sorted((copy / "train").glob("*.bin"))[0]
    damage(chunk)
    line = cli_error_line(capsys, ["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--trainer",
                                   str(CONFIGS / "trainer" / "smoke.yaml"), "--data", str(CONFIGS / "data" / "shards.yaml"),
                                   "--data.init_args.data_dir", str(copy)])  # fmt: skip
    assert line.startswith(f"error: {chunk}: the shard file is damaged (") and expected in line, line
    assert "python cli.py optimize" in line


def test_the_shards_folder_follows_the_umask(shards):
    # mkdtemp makes the staging folder 0700; moved into place, that would hide the shards from a project's others.
    from lightning_cnn.paths import current_umask

    assert shards.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_optimize_onto_a_full_disk_stops_at_once_and_leaves_nothing(small_disk, tmp_path):
    small_disk = small_disk("128k")
    data = _mnist_data_config(tmp_path, write_indexed_mnist(tmp_path / "mnist"))
    command = [sys.executable, str(REPO_ROOT / "cli.py"), "optimize", "--data", str(data), "--output_dir",
               str(small_disk / "shards"), "--num_workers", "1"]  # fmt: skip
    # LitData's writers wait forever on a full disk; the timeout only turns such a hang into a failure.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write the shards in {small_disk}: No space left") and "--output_dir" in last
    assert list(small_disk.iterdir()) == []


_FILLS_WHILE_WRITING = """
import sys
from pathlib import Path

import lightning_cnn.data.shards as shards
from lightning_cnn.data import MNISTDataModule
from tests.conftest import write_fake_mnist

shards._check_free_space = lambda *args: None  # as if another job filled the disk after the check
data = write_fake_mnist(Path(sys.argv[1]), n_train=3000, n_test=10)
shards.write_shards(MNISTDataModule(data_dir=str(data), download=False), sys.argv[2], num_workers=1)
"""


def test_a_disk_that_fills_while_shards_are_written_stops_the_writers_and_leaves_nothing(small_disk, tmp_path):
    disk = small_disk("1500k")  # room for the first chunks of 2.4 MB of training images, not for all of them
    script = [sys.executable, "-c", _FILLS_WHILE_WRITING, str(tmp_path / "mnist"), str(disk / "shards")]
    # LitData's writers would wait forever on the full disk; the timeout only turns such a hang into a failure.
    result = subprocess.run(script, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"OSError: [Errno 28] No space left on device (the disk filled while writing): '{disk}'"
    ), result.stderr[-3000:]
    assert list(disk.iterdir()) == []  # the partial folder is gone
    leftovers = subprocess.run(["pgrep", "-f", str(disk / "shards")], capture_output=True, text=True).stdout
    assert leftovers == "", f"writer processes left running: {leftovers}"


def test_optimize_subcommand_writes_shards_and_keeps_an_existing_folder(in_tmp, capsys):
    data = _mnist_data_config(in_tmp, write_indexed_mnist(in_tmp / "mnist"))
    from lightning_cnn.cli import main

    main(["optimize", "--data", str(data), "--output_dir", "out", "--num_workers", "1"])
    assert f"train {N_TRAIN}, val {N_VAL}, test {N_TEST}" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in (in_tmp / "out").rglob("*")}
    line = cli_error_line(capsys, ["optimize", "--data", str(data), "--output_dir", "out"])
    assert "already holds files" in line and "--overwrite true" in line
    assert {p: p.stat().st_mtime_ns for p in (in_tmp / "out").rglob("*")} == before  # nothing touched
    assert "--output_dir" in cli_error_line(capsys, ["optimize", "--data", str(data)])


def _fit(folder: Path, monkeypatch, shards: Path, *args: str, callbacks=None, workers: int = 0,
         augmentation: Optional[str] = None) -> CNNCLI:  # fmt: skip
    """``cli.py fit`` of a LeNet with dropout from the shards (two epochs of 12 steps), with the slides'
    augmentation in ``augmentation`` mode (``per_sample`` or ``batched``) if given."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    config = write_experiment(folder, shards, max_epochs=2, dense_dropout=0.3, callbacks=callbacks)
    document = yaml.safe_load(config.read_text())
    document["test_after_fit"] = False
    document["data"] = {
        "class_path": "lightning_cnn.data.ShardedDataModule",
        "init_args": {"data_dir": str(shards), "batch_size": 8, "num_workers": workers},
    }
    if augmentation:
        document["data"]["init_args"]["augmentation"] = {
            "class_path": "lightning_cnn.augmentation.KerasAugmentation",
            "init_args": {"rotation_range": 15, "width_shift_range": 0.1, "zoom_range": 0.1, "mode": augmentation},
        }
    config.write_text(yaml.safe_dump(document))
    return CNNCLI(args=["fit", "--config", str(config), *args])


@pytest.mark.parametrize(("workers", "augmentation"), [(0, None), (2, "per_sample"), (0, "batched")])
def test_kill_and_resume_mid_epoch_trains_the_uninterrupted_model(shards, tmp_path, monkeypatch, workers,
                                                                   augmentation):  # fmt: skip
    # Every random stream a resume must restore is in use: data order, dropout, and augmentation drawn in the
    # loader workers or on the batch.
    args = ["--resume_checkpoint.every_n_train_steps", "3"]
    options = dict(workers=workers, augmentation=augmentation)
    reference = _fit(tmp_path / "full", monkeypatch, shards, *args, **options)
    with pytest.raises(Killed):  # in epoch 1, two steps after the step-15 checkpoint
        _fit(tmp_path / "killed", monkeypatch, shards, *args, callbacks=[_callback(KillAtStep, step=17)], **options)
    resumed = _fit(tmp_path / "killed", monkeypatch, shards, *args, "--ckpt_path", "last", **options)
    assert resumed.trainer.global_step == reference.trainer.global_step == 2 * N_TRAIN // 8
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())


class RecordSamples(pl.Callback):
    """Writes the sample indices each rank trains on, per epoch, to ``samples-rank<r>.json``."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, []).extend(sample_ids(batch[0].cpu()))

    def on_train_end(self, trainer, pl_module) -> None:
        Path(f"samples-rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.multiprocess
def test_two_process_ddp_trains_on_each_sample_once_per_epoch(shards, tmp_path):
    expected = _train_ids(_source(write_indexed_mnist(tmp_path / "mnist")))
    callbacks = [{"class_path": "tests.test_shards.RecordSamples"}]
    config = write_experiment(tmp_path, shards, max_epochs=2, callbacks=callbacks)
    document = yaml.safe_load(config.read_text())
    document["test_after_fit"] = True
    document["data"] = {
        "class_path": "lightning_cnn.data.ShardedDataModule",
        "init_args": {"data_dir": str(shards), "batch_size": 8, "num_workers": 1, "normalize": False},
    }
    config.write_text(yaml.safe_dump(document))
    run_cli(tmp_path, "fit", "--config", str(config), "--trainer", str(CONFIGS / "trainer" / "ddp_cpu.yaml"))
    ranks = [json.loads((tmp_path / f"samples-rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        shares = [rank[epoch] for rank in ranks]
        assert len(shares[0]) == len(shares[1]) == N_TRAIN // 2
        assert sorted(shares[0] + shares[1]) == expected  # every sample, on exactly one rank


def test_an_interrupted_write_leaves_the_previous_shards_whole(shards, tmp_path, monkeypatch):
    import litdata

    out = tmp_path / "out"
    shutil.copytree(shards, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_optimize, calls = litdata.optimize, []

    def optimize_then_fail(*args, **kwargs):
        calls.append(kwargs["output_dir"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped while writing the second split
        return real_optimize(*args, **kwargs)

    monkeypatch.setattr(litdata, "optimize", optimize_then_fail)
    source = _source(write_indexed_mnist(tmp_path / "mnist"), classes=[0, 1, 2])
    with pytest.raises(KeyboardInterrupt):
        write_shards(source, out, num_workers=1, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "out"]  # no partial folder left beside it
    monkeypatch.setattr(litdata, "optimize", real_optimize)
    write_shards(source, out, num_workers=1, overwrite=True)  # replaced once the new shards are whole
    assert ShardedDataModule(str(out)).num_classes == 3


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs the real Fashion-MNIST (Debian's dataset-fashion-mnist)"
)
def test_the_readme_commands_shard_fashion_mnist_and_train_from_it(in_tmp, capsys):
    from lightning_cnn.cli import main

    # As "Data at scale" gives them, run from a fresh folder (the fit is cut to a few batches).
    main(["optimize", "--data", str(CONFIGS / "data" / "fashion_mnist.yaml"), "--output_dir", "shards/fashion_mnist"])
    assert "train 54000, val 6000, test 10000" in capsys.readouterr().out
    cli = CNNCLI(args=["fit", "--config", str(CONFIGS / "lenet_fashion_mnist.yaml"),
                       "--data", str(CONFIGS / "data" / "shards.yaml"), "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "5",
                       "--trainer.limit_test_batches", "5"])  # fmt: skip
    assert cli.datamodule.num_classes == 10 and cli.datamodule.label_names[0] == "T-shirt/top"
    assert cli.trainer.global_step == 20


def test_per_sample_augmentation_is_drawn_in_the_stream_and_seeded(shards):
    from lightning_cnn.augmentation import KerasAugmentation

    def first_epoch(augment: bool) -> list[torch.Tensor]:
        augmentation = (
            KerasAugmentation(rotation_range=20, zoom_range=0.2, mode="per_sample", seed=9) if augment else None
        )
        dm = ShardedDataModule(str(shards), batch_size=8, num_workers=0, augmentation=augmentation)
        dm.setup("fit")
        return [x for x, _ in dm.train_dataloader()]

    augmented, again, plain = first_epoch(True), first_epoch(True), first_epoch(False)
    assert all(torch.equal(a, b) for a, b in zip(augmented, again, strict=True))
    assert not all(torch.equal(a, p) for a, p in zip(augmented, plain, strict=True))
