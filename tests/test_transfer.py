"""The offline transfer experiment: its three configs chain (pretrain → frozen fine-tune → scratch) on tiny IDX
data; the real run on Fashion-MNIST is marked slow."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightning_cnn.cli import CNNCLI
from tests.conftest import CONFIGS, FASHION_MNIST_SYSTEM_DIR, REPO_ROOT, write_fake_mnist

TRANSFER = CONFIGS / "transfer"
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]


def test_pretrained_conv_part_is_loaded_and_stays_frozen(in_tmp):
    data = [
        "--data.init_args.data_dir",
        str(write_fake_mnist(in_tmp / "mnist", n_train=1000)),
        "--data.init_args.download",
        "false",
    ]
    pretrain = CNNCLI(args=["fit", "--config", str(TRANSFER / "pretrain_fashion_0to4.yaml"), *SMOKE, *data])
    checkpoint = pretrain.trainer.checkpoint_callback.best_model_path
    pretrained = torch.load(checkpoint, weights_only=True)["state_dict"]

    weights = ["--trainer.callbacks.init_args.backbone_weights", checkpoint]
    finetune = CNNCLI(args=["fit", "--config", str(TRANSFER / "finetune_fashion_5to9.yaml"), *SMOKE, *data, *weights])
    scratch = CNNCLI(args=["fit", "--config", str(TRANSFER / "scratch_fashion_5to9.yaml"), *SMOKE, *data])

    for key, value in finetune.model.net.backbone.state_dict().items():
        assert torch.equal(value, pretrained[f"net.backbone.{key}"]), key  # loaded, then untouched by training
    assert not torch.equal(scratch.model.net.backbone.conv1.layer.weight, pretrained["net.backbone.conv1.layer.weight"])
    # Same small labelled set in both runs.
    assert torch.equal(finetune.datamodule.train_set.labels, scratch.datamodule.train_set.labels)
    assert len(finetune.datamodule.train_set) == 200


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_transfer_experiment_on_fashion_mnist(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "transfer_experiment.py")], cwd=tmp_path, capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines()}
    finetuned = float(lines["fine-tuned, conv part frozen"].split(":")[1].strip().rstrip("%"))
    scratch = float(lines["from scratch"].split(":")[1].strip().rstrip("%"))
    print(result.stdout[-600:])
    assert finetuned > scratch
