"""The docs' worked examples of extending the package (examples/extending/, shown on the how-to page "A new
architecture or dataset"): one file and one YAML each, run as the page shows them, and registered so that every
registry sweep covers them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_cnn import ImageClassifier
from lightning_cnn.cli import CNNCLI
from lightning_cnn.registry import ARCHITECTURES, DATAMODULES
from tests.conftest import CONFIGS, REPO_ROOT, write_fake_mnist

EXAMPLES = REPO_ROOT / "examples" / "extending"
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]


@pytest.mark.parametrize("name", ["tiny_vgg.py", "tiny_vgg.yaml", "kmnist.py", "kmnist.yaml"])
def test_the_how_to_page_shows_each_example_file_itself(name):
    page = (REPO_ROOT / "docs" / "how-to" / "new-architecture-or-dataset.md").read_text()
    assert f'--8<-- "examples/extending/{name}"' in page  # included from the file at build time, never a copy


def test_the_examples_are_registered_and_so_swept():
    assert ARCHITECTURES["tiny_vgg"].__name__ == "TinyVGG"
    assert DATAMODULES["kmnist"].__name__ == "KMNISTDataModule"


def _fake_data(folder: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(write_fake_mnist(folder)), "--data.init_args.download", "false"]


def test_the_new_architecture_trains_from_its_yaml_and_reloads(in_tmp, capsys):
    config = str(EXAMPLES / "tiny_vgg.yaml")
    CNNCLI(args=["summary", "--config", config])
    assert "Total params: 16,698" in capsys.readouterr().out  # 2 blocks of two 3×3 convs (16, 32) + Dense 32→10
    cli = CNNCLI(args=["fit", "--config", config, *SMOKE, *_fake_data(in_tmp / "data")])
    folder = in_tmp / "runs" / "tiny_vgg" / "version_0"  # named after the YAML file
    assert Path(cli.trainer.log_dir) == Path("runs/tiny_vgg/version_0") and (folder / "checkpoints/last.ckpt").is_file()
    assert "test/acc" in cli.trainer.callback_metrics  # test_after_fit is on by default
    reloaded = ImageClassifier.load_from_checkpoint(folder / "checkpoints" / "last.ckpt")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(reloaded.eval()(x), cli.model.cpu().eval()(x))


def test_the_new_dataset_trains_from_its_yaml(in_tmp):
    cli = CNNCLI(args=["fit", "--config", str(EXAMPLES / "kmnist.yaml"), *SMOKE, *_fake_data(in_tmp / "data")])
    assert type(cli.datamodule).__name__ == "KMNISTDataModule"
    assert cli.datamodule.class_names[:3] == ("o", "ki", "su")
    assert (in_tmp / "runs" / "kmnist" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert type(cli.model.net).__name__ == "LeNet"  # the model piece the YAML names
