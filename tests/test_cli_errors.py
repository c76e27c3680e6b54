"""Bad input through the real command line: each case runs ``cli.py`` in a process of its own, in a folder of its
own, and must end with exit status 2, one ``error: …`` line naming the problem, no traceback, and nothing written
or left behind.

Starting Python with torch and Lightning takes about ten seconds, so the fixture builds every case's input first
and then runs all the processes, two at a time (one per core), forked from one process that imported the CLI
once (``tests/cli_forkserver.py``; each child runs ``cli.py`` itself as ``__main__``); each test only reads its
case's result. ``tests/test_readme.py`` runs ``cli.py`` from a fresh interpreter as a user would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from lightning_cnn.data.mnist import write_idx
from tests.conftest import CONFIGS, REPO_ROOT, write_fake_cifar, write_fake_mnist

# Per process; generous, so that no case depends on the machine being idle.
TIMEOUT_S = 900
WORKERS = 2
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]
LENET = CONFIGS / "lenet_mnist.yaml"
BN_CNN_CIFAR = CONFIGS / "bn_cnn_cifar10.yaml"
VGG16 = CONFIGS / "vgg16_finetune_cifar10.yaml"
SMALL_NET = ["--data.init_args.image_size", "32", "--model.init_args.net.init_args.arch", "mobilenet_v3_small"]
# SGD at lr 0.05, multiplied by 1e8 each epoch: epoch 0 trains, then the weights blow up.
DIVERGING = ["--trainer.max_epochs", "4", "--model.init_args.optimizer", "torch.optim.SGD",
             "--model.init_args.optimizer.init_args.lr", "0.05",
             "--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
             "--model.init_args.lr_scheduler.init_args.step_size", "1",
             "--model.init_args.lr_scheduler.init_args.gamma", "1e8"]  # fmt: skip
TWICE = "trainer:\n  max_epochs: 2\n  max_epochs: 3\n"
BROKEN = "trainer:\n  max_epochs: [2\n  precision: 32\n"
TIME_BUDGET = ["--trainer", str(CONFIGS / "trainer" / "time_budget.yaml")]
NEGATIVE_ROTATION = ["--data.init_args.augmentation", "lightning_cnn.augmentation.KerasAugmentation",
                     "--data.init_args.augmentation.init_args.rotation_range", "-5"]  # fmt: skip

# Simulated faults: Python run before the real CLI, in its process.
NETWORK_DOWN_FOR_WEIGHTS = """
import urllib.error
import torch.hub
def offline(*args, **kwargs):
    raise urllib.error.URLError("network unreachable (simulated)")
torch.hub.download_url_to_file = offline
"""
NETWORK_DOWN_FOR_DATA = """
import urllib.error
import urllib.request
def offline(*args, **kwargs):
    raise urllib.error.URLError("network unreachable (simulated)")
urllib.request.urlopen = offline
"""
# Epoch 0's two checkpoint writes (best, last) succeed; the third leaves a truncated file, as a full disk does.
DISK_FULL = """
import errno
from pathlib import Path
from lightning_fabric.plugins.io import torch_io
real_save, calls = torch_io._atomic_save, []
def disk_fills_up(checkpoint, path):
    calls.append(path)
    if len(calls) <= 2:
        return real_save(checkpoint, path)
    Path(path).write_bytes(b"PK\\x03\\x04 truncated")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
torch_io._atomic_save = disk_fills_up
"""

# Every path under a case's folder: a folder as None, a file as the SHA-256 of its bytes.
Snapshot = dict[str, Optional[str]]


def _snapshot(folder: Path) -> Snapshot:
    return {
        str(p.relative_to(folder)): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
    }


def _changes(before: Snapshot, after: Snapshot) -> dict[str, list[str]]:
    return {
        "written": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p]),
    }


NO_CHANGES: dict[str, list[str]] = {"written": [], "removed": [], "changed": []}


def _unchanged(folder: Path, before: Snapshot) -> None:
    assert _changes(before, _snapshot(folder)) == NO_CHANGES


@dataclass(frozen=True)
class Case:
    """``build(folder, good_checkpoint)`` writes the case's input into its folder (the process's working folder)
    and returns the command line; ``expect`` are parts of the error line, ``not_in_stderr`` parts of no line;
    ``prelude`` is a simulated fault, run first in the CLI's process; ``check(folder, before)`` checks the folder
    afterwards (by default: exactly what ``build`` left there, byte for byte)."""

    build: Callable[[Path, Path], list[str]]
    expect: tuple[str, ...]
    prelude: str = ""
    check: Callable[[Path, Snapshot], None] = _unchanged
    not_in_stderr: tuple[str, ...] = ()


class _Payload:
    """A pickle that runs code when loaded: it writes ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('ran')",))


# --- inputs ----------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _torch_save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _net_yaml(folder: Path, line: str) -> Path:
    return _write(folder / "extra.yaml", f"model:\n  init_args:\n    net:\n      init_args:\n        {line}\n")


def _mnist(folder: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(write_fake_mnist(folder / "mnist")), "--data.init_args.download", "false"]


def _cifar(folder: Path) -> list[str]:
    cifar = write_fake_cifar(folder / "cifar10", 10)
    return ["--data.init_args.data_dir", str(cifar), "--data.init_args.download", "false"]


def _lenet(folder: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(LENET), *SMOKE, *_mnist(folder), *extra]


def _bn_cnn_cifar(folder: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(BN_CNN_CIFAR), *SMOKE, *_cifar(folder), *extra]


def _lenet_with(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda folder, _: _lenet(folder, *extra)


def _lenet_with_net_yaml(line: str) -> Callable[[Path, Path], list[str]]:
    return lambda folder, _: _lenet(folder, "--config", str(_net_yaml(folder, line)))


def _test_with_checkpoint(make: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda folder, _: ["test", "--config", str(LENET), "--ckpt_path", str(make(folder))]


def _predict_on(make: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda folder, good: ["predict", "--ckpt_path", str(good), "--inputs", str(make(folder))]


def _binary_test_of_a_10_class_checkpoint(folder: Path, good: Path) -> list[str]:
    return ["test", "--config", str(LENET), *_mnist(folder), "--data.init_args.classes", "[3, 5]", "--ckpt_path",
            str(good)]  # fmt: skip


def _empty_data_dir(folder: Path, _: Path) -> list[str]:
    (folder / "empty").mkdir()
    return ["fit", "--config", str(LENET), *SMOKE, "--data.init_args.data_dir", str(folder / "empty"),
            "--data.init_args.download", "false"]  # fmt: skip


def _corrupt_images_beside_an_earlier_run(folder: Path, _: Path) -> list[str]:
    earlier = folder / "runs" / "lenet_mnist" / "version_0"
    _write(earlier / "checkpoints" / "last.ckpt", "an earlier run's checkpoint")
    _write(earlier / "metrics.csv", "epoch,val/loss\n0,0.5\n")
    args = _lenet(folder)
    (folder / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    return args


def _label_12(folder: Path, _: Path) -> list[str]:
    args = _lenet(folder)
    labels = np.zeros(240, dtype=np.uint8)
    labels[17] = 12
    write_idx(folder / "mnist" / "train-labels-idx1-ubyte.gz", labels)
    return args


def _cifar_batch_that_runs_code(folder: Path, _: Path) -> list[str]:
    args = _bn_cnn_cifar(folder)
    with open(folder / "cifar10" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Payload(folder / "pwned.txt"), b"labels": [0]}, f, protocol=2)
    return args  # the default check: pwned.txt never appears


def _weights_file(folder: Path, _: Path) -> list[str]:
    weights = _write(folder / "weights.pth", "just some text\n")
    return ["fit", "--config", str(VGG16), *SMOKE, *_cifar(folder), *SMALL_NET,
            "--model.init_args.net.init_args.weights", str(weights)]  # fmt: skip


def _normalization_of_other_weights(folder: Path, _: Path) -> list[str]:
    from torchvision.models import get_model, get_model_weights

    # resnet18's weights where torchvision's cache looks (TORCH_HOME=<folder>/torch): nothing to download.
    url = get_model_weights("resnet18")["IMAGENET1K_V1"].url
    cache = folder / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(get_model("resnet18", weights=None).state_dict(), cache / os.path.basename(url))
    return ["fit", "--config", str(VGG16), *SMOKE, *_cifar(folder), "--data.init_args.image_size", "32",
            "--model.init_args.net.init_args.arch", "resnet18", "--data.init_args.normalize_from_weights",
            "VGG16_Weights.IMAGENET1K_V1"]  # fmt: skip


def _csv_logger_in(save_dir: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda folder, _: _lenet(folder, "--trainer.logger", "pytorch_lightning.loggers.CSVLogger",
                                    "--trainer.logger.init_args.save_dir", str(save_dir(folder)))  # fmt: skip


def _config_of_an_earlier_run(folder: Path, _: Path) -> list[str]:
    """Without loggers the run's folder is the working folder, where an earlier run left its config."""
    _write(folder / "config.yaml", "# an earlier run's config\n")
    return _lenet(folder, "--trainer.logger", "false")


def _data_dir_with_own_file(folder: Path, _: Path) -> list[str]:
    _write(folder / "data" / "mine.txt", "kept")
    return ["fit", "--config", str(LENET), *SMOKE, "--data.init_args.data_dir", str(folder / "data")]


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _object_npy(folder: Path) -> Path:
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object))
    return folder / "objects.npy"


def _class_of_unreadable_files(in_memory: bool) -> Callable[[Path, Path], list[str]]:
    def build(folder: Path, _: Path) -> list[str]:
        from PIL import Image

        for name in ("cat", "dog"):
            (folder / "pets" / name).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (10, 12), (40 * i, 90, 200)).save(folder / "pets" / name / f"{i}.png")
        for i in range(3):
            _write(folder / "pets" / "zebra" / f"{i}.png", "not a picture")
        return ["fit", "--config", str(LENET), *SMOKE, "--data", "lightning_cnn.data.ImageFolderDataModule",
                "--data.init_args.data_dir", str(folder / "pets"), "--data.init_args.image_size", "16",
                "--data.init_args.val_split", "2", "--data.init_args.in_memory", str(in_memory).lower()]  # fmt: skip

    return build


def _empty_class_folder(folder: Path, _: Path) -> list[str]:
    from PIL import Image

    for name, count in (("cat", 6), ("dog", 6), ("zebra", 0)):
        (folder / "pets" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (10, 12), (40 * i, 90, 200)).save(folder / "pets" / name / f"{i}.png")
    return ["fit", "--config", str(LENET), *SMOKE, "--data", "lightning_cnn.data.ImageFolderDataModule",
            "--data.init_args.data_dir", str(folder / "pets"), "--data.init_args.image_size", "16",
            "--data.init_args.val_split", "2", "--test_after_fit", "false"]  # fmt: skip


# --- checks of what a case leaves ----------------------------------------------------------------------------


def _only_empty_cache_folders_added(folder: Path, before: Snapshot) -> None:
    # torch.hub makes its cache folder before it downloads; no weights file, whole or partial, may stay.
    after = {path: digest for path, digest in _snapshot(folder).items() if not path.startswith("torch")}
    assert _changes(before, after) == NO_CHANGES
    assert [p for p in (folder / "torch").rglob("*") if not p.is_dir()] == []


def _finite_checkpoints_only(folder: Path, _: Snapshot) -> None:
    runs = folder / "runs" / "lenet_mnist"
    checkpoints = sorted(runs.rglob("*.ckpt"))
    assert checkpoints, "the finite epoch's checkpoints are kept"
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), f"{path.name} holds non-finite weights"
    assert not list(runs.rglob("confusion_matrix.png"))  # no test of a diverged model


def _epoch_0_checkpoints_whole(folder: Path, _: Snapshot) -> None:
    checkpoints = next((folder / "runs").rglob("checkpoints"))
    assert not list(checkpoints.glob(".*partial")), "no temporary file left"
    saved = sorted(checkpoints.glob("*.ckpt"))
    assert saved
    for path in saved:
        assert torch.load(path, weights_only=True)["epoch"] == 0, f"{path.name} is not the whole epoch-0 file"


LINKED_IN_CHANNELS = "model.init_args.net.init_args.in_channels=1 disagrees with the data (CIFAR10DataModule gives 3)"

CASES: dict[str, Case] = {
    # Keys and values that the parser or a constructor refuses.
    "unknown_yaml_key": Case(_lenet_with_net_yaml("filterz: [4, 12]"), ("filterz",)),
    "unknown_cli_key": Case(_lenet_with("--model.init_args.net.init_args.filterz", "[4, 12]"), ("filterz",)),
    "val_split_above_1": Case(_lenet_with("--data.init_args.val_split", "1.5"), ("val_split=1.5; use a fraction",)),
    "unknown_activation": Case(
        _lenet_with_net_yaml("activation: relux"), ("Unknown activation 'relux'; choose one of",)
    ),
    "negative_rotation_range": Case(_lenet_with(*NEGATIVE_ROTATION), ("rotation_range=-5", "use degrees >= 0")),
    "linked_key_on_the_command_line": Case(
        lambda folder, _: _bn_cnn_cifar(folder, "--model.init_args.net.init_args.in_channels", "1"),
        (LINKED_IN_CHANNELS, "leave it out"),
    ),
    "linked_key_in_a_yaml": Case(
        lambda folder, _: _bn_cnn_cifar(folder, "--config", str(_net_yaml(folder, "in_channels: 1"))),
        (LINKED_IN_CHANNELS, "leave it out"),
    ),
    # Data files: missing, corrupt, out of range, or a pickle that would run code.
    "missing_data": Case(
        _empty_data_dir, ("MNIST not found", "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]")
    ),
    "corrupt_idx_file": Case(_corrupt_images_beside_an_earlier_run, ("t10k-images-idx3-ubyte.gz cannot be read",)),
    "label_out_of_range": Case(_label_12, ("train-labels-idx1-ubyte.gz holds label 12, outside 0..9",)),
    "cifar_batch_that_runs_code": Case(
        _cifar_batch_that_runs_code, ("data_batch_1 is refused: it names ", "exec, which a CIFAR batch never")
    ),
    # Checkpoints: missing, not a checkpoint, holding Python objects, or of another model.
    "class_of_unreadable_files": Case(
        _class_of_unreadable_files(in_memory=True), ("zebra: none of its 3 image files can be read",)
    ),
    "class_of_unreadable_files_streamed": Case(
        _class_of_unreadable_files(in_memory=False), ("zebra: none of its 3 image files can be read",)
    ),
    "checkpoint_missing": Case(_test_with_checkpoint(lambda d: d / "nowhere.ckpt"), ("nowhere.ckpt does not exist",)),
    "checkpoint_text_file": Case(
        _test_with_checkpoint(lambda d: _write(d / "notes.ckpt", "hello")),
        ("notes.ckpt is not a PyTorch checkpoint",),
    ),
    "checkpoint_not_lightning": Case(
        _test_with_checkpoint(lambda d: _torch_save({"w": torch.zeros(1)}, d / "sd.ckpt")),
        ("sd.ckpt is a PyTorch file but not a Lightning checkpoint",),
    ),
    "checkpoint_python_objects": Case(
        _test_with_checkpoint(lambda d: _torch_save({"state_dict": {}, "x": Path("a")}, d / "objects.ckpt")),
        ("objects.ckpt is not a PyTorch checkpoint", "Python objects"),
    ),
    "checkpoint_other_class_count": Case(
        _binary_test_of_a_10_class_checkpoint,
        (
            "does not fit the model: net.head.output",
            "(10, 300) in the checkpoint but (1, 300) in the model built from the config",
        ),
    ),
    "checkpoint_other_channels": Case(
        lambda folder, good: ["test", "--config", str(BN_CNN_CIFAR), *_cifar(folder), "--ckpt_path", str(good)],
        (
            "does not fit the model: net.backbone.conv1",
            "(4, 1, 5, 5) in the checkpoint but (4, 3, 5, 5) in the model built from the config",
        ),
    ),
    # Pretrained weights, and the normalization they decide.
    "weights_not_a_state_dict": Case(_weights_file, ("weights.pth is not a PyTorch checkpoint/state dict",)),
    "weights_unfetchable": Case(
        lambda folder, _: ["fit", "--config", str(VGG16), *SMOKE, *_cifar(folder), *SMALL_NET],
        ("error: weights='IMAGENET1K_V1': ", "is not there and downloading"),
        prelude=NETWORK_DOWN_FOR_WEIGHTS,
        check=_only_empty_cache_folders_added,
        not_in_stderr=("Union",),  # jsonargparse's report of every type it tried
    ),
    "normalization_of_other_weights": Case(
        _normalization_of_other_weights,
        ("data.normalize_from_weights='VGG16_Weights.IMAGENET1K_V1' disagrees with", "ResNet18_Weights.IMAGENET1K_V1"),
    ),
    # Output folders that cannot be written, a loss that diverges, a full disk, a failed download.
    "save_dir_under_a_file": Case(
        _csv_logger_in(lambda d: _write(d / "afile", "in the way") / "runs"),
        ("cannot write the run's folder ", "afile is not writable (Not a directory)"),
    ),
    "config_of_an_earlier_run_without_loggers": Case(
        _config_of_an_earlier_run,
        ("config.yaml is already there (a previous run's config, kept as it is)", "--trainer.default_root_dir DIR"),
    ),
    "save_dir_in_sys": Case(
        _csv_logger_in(lambda _: Path("/sys/lightning_cnn_runs")),
        ("cannot write the run's folder /sys/", "is not writable (Permission denied)"),
    ),
    "loss_becomes_nan": Case(
        _lenet_with(*DIVERGING),
        ("training stopped: the loss became nan in epoch ", "(data loss nan, penalty ", "lower the learning rate"),
        check=_finite_checkpoints_only,
    ),
    "disk_full": Case(
        _lenet_with("--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "max"),
        ("error: cannot write ", "/checkpoints: No space left on device"),
        prelude=DISK_FULL,
        check=_epoch_0_checkpoints_whole,
    ),
    "download_fails": Case(
        _data_dir_with_own_file, ("MNIST not found", "downloading it failed"), prelude=NETWORK_DOWN_FOR_DATA
    ),
    # predict --inputs.
    "predict_missing_inputs": Case(_predict_on(lambda d: d / "missing"), ("missing does not exist",)),
    "predict_pickled_npy": Case(_predict_on(_object_npy), ("objects.npy is not a plain .npy array",)),
    "predict_empty_npy": Case(
        _predict_on(lambda d: _npy(d / "empty.npy", np.zeros((0, 28, 28), np.uint8))),
        ("empty.npy holds no images (shape (0, 28, 28))",),
    ),
    "predict_text_as_npy": Case(
        _predict_on(lambda d: _write(d / "notes.npy", "not an array\n")), ("notes.npy is not an .npy file",)
    ),
    "predict_channels_first_npy": Case(
        _predict_on(lambda d: _npy(d / "chw.npy", np.zeros((2, 1, 28, 28), np.uint8))),
        ("shape (2, 1, 28, 28)", "give (N, H, W) or (N, H, W, C)", "channels-first"),
    ),
    # Nets from outside the package; images too small for the net.
    "net_builder_function": Case(
        lambda folder, _: _bn_cnn_cifar(folder, "--model.init_args.net", "torchvision.models.resnet18"),
        ("takes an nn.Module class, not a builder function",),
    ),
    "net_cannot_take_the_images": Case(
        lambda folder, _: _bn_cnn_cifar(folder, "--model.init_args.net", "torchvision.models.AlexNet"),
        ("(AlexNet) cannot take the data's 3×32×32 images",),
    ),
    "net_class_path_misspelt": Case(
        _lenet_with("--model.init_args.net", "lightning_cnn.models.LeNett"),
        ("model.init_args.net (lightning_cnn.models.LeNett): module 'lightning_cnn.models' has no attribute 'LeNett'",),
    ),
    "images_too_small": Case(_lenet_with("--data.init_args.image_size", "8"), ("input_size=(8, 8) is too small",)),
    # YAML files the reader would take silently or report without naming them.
    "yaml_key_written_twice": Case(
        lambda folder, _: _lenet(folder, "--config", str(_write(folder / "twice.yaml", TWICE))),
        ("twice.yaml: key 'max_epochs' is written twice (lines 2 and 3); keep one",),
    ),
    "yaml_syntax_error": Case(
        lambda folder, _: _lenet(folder, "--config", str(_write(folder / "broken.yaml", BROKEN))),
        ("broken.yaml: line 3, column", "fix the YAML syntax there"),
    ),
    # Training settings torch or a callback refuses once the trainer runs.
    "negative_learning_rate": Case(
        _lenet_with("--model.init_args.optimizer.init_args.lr", "-1"),
        ("model.init_args.optimizer: Invalid learning rate: -1.0",),
    ),
    "negative_clock_duration": Case(
        _lenet_with(*TIME_BUDGET, "--trainer.callbacks.duration=-00:01:00"),
        ("duration='-00:01:00' is not a time budget",),
    ),
    "time_budget_with_a_scheduler": Case(
        _lenet_with(
            *TIME_BUDGET,
            "--model.init_args.lr_scheduler",
            "torch.optim.lr_scheduler.StepLR",
            "--model.init_args.lr_scheduler.init_args.step_size",
            "1",
        ),  # fmt: skip
        ("TimeBudget sets the learning rate itself, but the model also configures StepLR",),
    ),
    # export.
    "export_missing_checkpoint": Case(
        lambda folder, _: ["export", "--ckpt_path", str(folder / "missing.ckpt"), "--format", "onnx"],
        ("missing.ckpt does not exist",),
    ),
    "export_out_unwritable": Case(
        lambda folder, good: ["export", "--ckpt_path", str(good), "--format", "pt2", "--out", "/sys/model.pt2"],
        ("cannot write /sys/model.pt2", "choose another --out"),
    ),
    "export_unknown_format": Case(
        lambda folder, good: ["export", "--ckpt_path", str(good), "--format", "tflite"], ("--format", "'tflite'")
    ),
}
# Not an error: the run goes on without the empty class.
EMPTY_CLASS_FOLDER = Case(_empty_class_folder, ())

# Cases the CLI does not meet yet: name -> what goes wrong.
XFAILS: dict[str, str] = {}


def _sys_refuses_files() -> bool:
    """Whether ``/sys`` exists and refuses new files (on Linux even root gets "Permission denied")."""
    if not Path("/sys").is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return False
    except OSError:
        return True


SKIPS: dict[str, str] = {}
if not _sys_refuses_files():
    SKIPS["save_dir_in_sys"] = SKIPS["export_out_unwritable"] = "no /sys that refuses new files here"
if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
    SKIPS["export_missing_checkpoint"] = "ONNX export needs the export extra (onnx, onnxscript)"


# --- running -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What one ``cli.py`` process left: its exit status and output."""

    returncode: int
    stdout: str
    stderr: str


def _run_all(jobs: dict[str, tuple[Path, list[str], str]], logs: Path) -> dict[str, Result]:
    """Run every job (folder, cli.py arguments, prelude) as a process of its own, ``WORKERS`` at a time, forked
    from one process that imported the CLI once (tests/cli_forkserver.py)."""
    lines = [
        json.dumps(
            {
                "name": name,
                "folder": str(folder),
                "args": args,
                "prelude": prelude,
                "log": str(logs / name),
                "env": {"TORCH_HOME": str(folder / "torch")},
            }
        )  # fmt: skip
        for name, (folder, args, prelude) in jobs.items()
    ]
    # One thread each: WORKERS cases run at a time, one per core.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    server = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "cli_forkserver.py"), str(WORKERS)],
        input="\n".join(lines), capture_output=True, text=True, env=env, timeout=TIMEOUT_S * len(jobs) / WORKERS,
    )  # fmt: skip
    assert server.returncode == 0, server.stderr[-6000:]
    codes = {row["name"]: row["rc"] for row in map(json.loads, server.stdout.splitlines())}
    assert codes.keys() == jobs.keys(), server.stderr[-6000:]
    read = lambda name, kind: (logs / f"{name}.{kind}").read_text()  # noqa: E731
    return {name: Result(codes[name], read(name, "out"), read(name, "err")) for name in jobs}


def _good_checkpoint(folder: Path) -> Path:
    """A LeNet trained for a few batches on fake MNIST: what the predict and export cases are given."""
    from lightning_cnn.cli import CNNCLI

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        cli = CNNCLI(args=_lenet(folder, "--test_after_fit", "false"))
        return Path(cli.trainer.log_dir).resolve() / "checkpoints" / "last.ckpt"


@dataclass(frozen=True)
class Outcome:
    folder: Path
    before: Snapshot
    result: Result


def _selected(request: pytest.FixtureRequest) -> set[str]:
    """The cases of the tests this session runs (``-k`` or node ids may pick a few)."""
    items = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    # The one test without parameters reads the empty class folder.
    return {item.callspec.params["name"] if hasattr(item, "callspec") else "empty_class_folder" for item in items}


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    good = _good_checkpoint(tmp_path_factory.mktemp("good"))
    selected = _selected(request) - set(SKIPS)
    prepared = {}
    for name, case in {**CASES, "empty_class_folder": EMPTY_CLASS_FOLDER}.items():
        if name in selected:
            folder = tmp_path_factory.mktemp(name)
            args = case.build(folder, good)
            prepared[name] = (folder, _snapshot(folder), args, case.prelude)
    results = _run_all({n: (f, a, p) for n, (f, _, a, p) in prepared.items()}, tmp_path_factory.mktemp("logs"))
    return {name: Outcome(folder, before, results[name]) for name, (folder, before, _, _) in prepared.items()}


def _stderr(outcome: Outcome) -> str:
    assert "Traceback" not in outcome.result.stderr, outcome.result.stderr
    return outcome.result.stderr


def _marks(name: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.skip(reason=SKIPS[name])] if name in SKIPS else []
    if name in XFAILS:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAILS[name]))
    return marks


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name), id=name) for name in CASES])
def test_bad_input_ends_with_one_error_line_and_leaves_no_files(outcomes, name):
    case, outcome = CASES[name], outcomes[name]
    stderr = _stderr(outcome)
    assert outcome.result.returncode == 2, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), stderr
    assert [part for part in case.expect if part not in last] == [], last
    assert [part for part in case.not_in_stderr if part in stderr] == [], stderr
    case.check(outcome.folder, outcome.before)


def test_an_empty_class_folder_is_named_and_the_run_goes_on_without_it(outcomes):
    outcome = outcomes["empty_class_folder"]
    stderr = _stderr(outcome)
    assert outcome.result.returncode == 0, stderr
    assert "pets: class folder(s) ['zebra'] hold no images and are left out" in stderr
    last = next((outcome.folder / "runs").rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["hyper_parameters"]["preprocessing"]["class_names"] == ["cat", "dog"]
