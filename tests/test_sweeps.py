"""Every registered architecture and datamodule, through the CLI: config printed and read back, one training step,
the checkpoint reloaded alone (registries: lightning_cnn/registry.py; fake data: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_cnn import ImageClassifier
from lightning_cnn.cli import CNNCLI
from lightning_cnn.registry import ARCHITECTURES, DATAMODULES
from tests.conftest import fake_datamodule_kwargs

# One step of everything, quietly: the sweeps check wiring, not learning.
ONE_STEP = ["--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false", "--summary.enabled", "false",
            "--trainer.logger", "false", "--checkpoint.dirpath", "ckpts"]  # fmt: skip


def _config(folder: Path, net: str, data: str) -> Path:
    data_args = fake_datamodule_kwargs(data, folder / "data", batch_size=4)
    config = {
        "model": {
            "class_path": "lightning_cnn.ImageClassifier",
            "init_args": {
                "net": {"class_path": ARCHITECTURES.class_path(net), "init_args": ARCHITECTURES.example(net)}
            },
        },
        "data": {"class_path": DATAMODULES.class_path(data), "init_args": data_args},
    }
    path = folder / f"{net}_{data}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _round_trip(folder: Path, net: str, data: str, capsys: pytest.CaptureFixture) -> None:
    config = _config(folder, net, data)
    with pytest.raises(SystemExit):
        CNNCLI(args=["fit", "--config", str(config), "--print_config"])
    printed = folder / "printed.yaml"
    printed.write_text(capsys.readouterr().out)  # the full resolved config, read back as the run's config
    cli = CNNCLI(args=["fit", "--config", str(printed), *ONE_STEP])
    assert cli.trainer.global_step == 1
    reloaded = ImageClassifier.load_from_checkpoint(Path("ckpts") / "last.ckpt")  # no config, no net given
    x = torch.rand(2, *cli.datamodule.dims)
    torch.testing.assert_close(reloaded.eval()(x), cli.model.cpu().eval()(x))


@pytest.mark.parametrize("net", sorted(ARCHITECTURES))
def test_every_architecture_trains_and_reloads_through_the_cli(in_tmp, capsys, net):
    _round_trip(in_tmp, net, "mnist", capsys)


@pytest.mark.parametrize("data", sorted(DATAMODULES))
def test_every_datamodule_trains_and_reloads_through_the_cli(in_tmp, capsys, data):
    _round_trip(in_tmp, "lenet", data, capsys)
