"""Checkpoints that stand alone (no pretrained file, cache or network to rebuild a fine-tuned network), one-line
errors for checkpoints that are missing, foreign or of another model, and the network's weights deciding the
data's normalization."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models import get_model, get_model_weights

from lightning_cnn import ImageClassifier
from lightning_cnn.cli import CNNCLI
from tests.conftest import CONFIGS, cli_error_line, write_fake_cifar, write_fake_mnist

SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]
VGG16_CONFIG = CONFIGS / "vgg16_finetune_cifar10.yaml"
ARCH = "mobilenet_v3_small"  # VGG16's own weights file is 528 MB; the config works the same with a small net


def _cifar(root: Path) -> list[str]:
    folder = write_fake_cifar(root / "cifar10", 10)
    return ["--data.init_args.data_dir", str(folder), "--data.init_args.download", "false",
            "--data.init_args.image_size", "32"]  # fmt: skip


def _mnist(root: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(write_fake_mnist(root / "mnist")), "--data.init_args.download", "false"]


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lenet")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli = CNNCLI(args=["fit", "--config", str(CONFIGS / "lenet_mnist.yaml"), *SMOKE, *_mnist(root),
                           "--test_after_fit", "false"])  # fmt: skip
        return Path(cli.trainer.log_dir).resolve() / "checkpoints" / "last.ckpt"


def test_finetuned_torchvision_checkpoint_loads_and_predicts_without_the_weights_file(in_tmp):
    torch.manual_seed(3)
    weights = in_tmp / f"{ARCH}.pth"
    torch.save(get_model(ARCH, weights=None).state_dict(), weights)
    net = ["--model.init_args.net.init_args.arch", ARCH, "--model.init_args.net.init_args.weights", str(weights)]
    cli = CNNCLI(
        args=["fit", "--config", str(VGG16_CONFIG), *SMOKE, *_cifar(in_tmp), *net, "--test_after_fit", "false"]
    )
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    weights.unlink()  # a machine without the original weights

    reloaded = ImageClassifier.load_from_checkpoint(last).eval()
    x = torch.rand(4, 3, 32, 32)
    cli.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.predict_step(x, 0), cli.model.predict_step(x, 0))
    # The CLI too: test and predict from the checkpoint alone (model and data rebuilt from it).
    tested = CNNCLI(args=["test", "--ckpt_path", str(last), "--trainer.limit_test_batches", "2"])
    assert "test/acc" in tested.trainer.callback_metrics
    predicted = CNNCLI(args=["predict", "--ckpt_path", str(last), "--trainer.limit_predict_batches", "2"])
    assert predicted.trainer.state.finished
    # Every checkpoint the CLI writes loads with weights_only=True (no pickled objects).
    for path in Path(cli.trainer.log_dir, "checkpoints").glob("*.ckpt"):
        torch.load(path, weights_only=True)


@pytest.fixture
def cached_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Random state dicts where torchvision's cache looks for the named ImageNet weights of ``arch``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)

    def place(arch: str) -> None:
        url = get_model_weights(arch)["IMAGENET1K_V1"].url
        torch.save(get_model(arch, weights=None).state_dict(), folder / os.path.basename(url))

    return place


def test_the_networks_weights_decide_the_normalization(in_tmp, cached_weights):
    cached_weights("resnet18")
    net = [
        "--model.init_args.net.init_args.arch",
        "resnet18",
        "--model.init_args.net.init_args.weights",
        "IMAGENET1K_V1",
    ]
    cli = CNNCLI(
        args=["fit", "--config", str(VGG16_CONFIG), *SMOKE, *_cifar(in_tmp), *net, "--test_after_fit", "false"]
    )
    # Swapping arch swapped the preprocessing with it (the config names the weights once).
    assert cli.datamodule.normalize_from_weights == "ResNet18_Weights.IMAGENET1K_V1"
    preprocessing = cli.model.preprocessing
    assert preprocessing.mean == pytest.approx((0.485, 0.456, 0.406)) and preprocessing.image_size == (32, 32)
    # ...and the checkpoint carries it, for predict and export.
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["hyper_parameters"]["preprocessing"]
    assert saved["mean"] == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "nowhere.ckpt", "does not exist"),
        (lambda d: (d / "notes.ckpt").write_text("hello") and d / "notes.ckpt", "is not a PyTorch checkpoint"),
        (lambda d: torch.save({"w": torch.zeros(1)}, d / "sd.ckpt") or d / "sd.ckpt", "not a Lightning checkpoint"),
        (lambda d: torch.save({"state_dict": {}, "x": Path("a")}, d / "obj.ckpt") or d / "obj.ckpt", "Python objects"),
    ],
)
def test_unusable_checkpoint_files_end_with_one_line_in_predict_too(in_tmp, capsys, make, message):
    # test_cli_errors.py runs these under `test`, each in its own process.
    path = make(in_tmp)
    line = cli_error_line(capsys, ["predict", "--config", str(CONFIGS / "lenet_mnist.yaml"), "--ckpt_path", str(path)])
    assert line.startswith("error: ") and str(path) in line and message in line


def test_a_config_describing_another_model_is_named_and_config_yaml_records_what_ran(lenet_ckpt, in_tmp, capsys):
    cli = CNNCLI(args=["test", "--config", str(CONFIGS / "bn_cnn_mnist.yaml"), *_mnist(in_tmp),
                       "--ckpt_path", str(lenet_ckpt), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note: the model comes from --ckpt_path")]
    assert len(note) == 1 and "'lightning_cnn.models.LeNet' in the checkpoint" in note[0]
    assert "'lightning_cnn.models.BatchNormCNN' in the config" in note[0]
    assert type(cli.model.net).__name__ == "LeNet"
    saved = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["class_path"] == "lightning_cnn.models.LeNet"


def test_the_same_model_as_the_checkpoint_gives_no_note(lenet_ckpt, in_tmp, capsys):
    CNNCLI(args=["test", "--config", str(CONFIGS / "lenet_mnist.yaml"), *_mnist(in_tmp), "--ckpt_path",
                 str(lenet_ckpt), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert "note:" not in capsys.readouterr().err
