"""The offline transfer experiment: its configs chain (pretrain → fine-tune arms → scratch) on tiny IDX data, and
the script runs end to end on them; the real (--quick) run on Fashion-MNIST is marked slow."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

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


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "transfer_experiment", REPO_ROOT / "scripts" / "transfer_experiment.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_script_runs_every_arm_and_writes_its_tables_and_plot(in_tmp):
    script = load_script()
    data = [
        "--data.init_args.data_dir",
        str(write_fake_mnist(in_tmp / "mnist", n_train=2000, n_test=100)),
        "--data.init_args.download",
        "false",
    ]
    # --quick's settings, shortened further: a few small batches of a narrow CNN (the same three conv blocks, so
    # BatchNorm and the unfreezing stages are exercised); two epochs so the unfreezing arm unfreezes (at 1).
    small = ["--model.init_args.net.init_args.filters", "[4, 4, 4]", "--data.init_args.batch_size", "16"]
    results = script.main(["--quick", "--out", str(in_tmp / "out"), *SMOKE, "--trainer.max_epochs", "2", *small, *data])

    assert set(results) == {"frozen", "augmented", "unfreeze", "full", "scratch"}
    text = (in_tmp / "out" / "transfer_results.md").read_text()
    assert text.startswith("Made by `python scripts/transfer_experiment.py --quick --out ") and "machine: " in text
    assert all(result.label in text for result in results.values())
    assert (in_tmp / "out" / "forgetting.png").stat().st_size > 0
    for name in ("frozen", "unfreeze", "full"):  # the monitored arms
        assert [epoch for epoch, _ in results[name].source_history] == [0, 1]
        assert len(results[name].val_acc) == 2
    assert results["unfreeze"].unfreeze_at_epoch == 1 and "unfrozen at epoch 1" in results["unfreeze"].label
    frozen = results["frozen"]
    assert all(acc == pytest.approx(frozen.source_before, abs=1e-6) for _, acc in frozen.source_history)
    assert results["augmented"].source_before is None and results["scratch"].source_before is None


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_transfer_experiment_on_fashion_mnist(in_tmp):
    results = load_script().main(["--quick", "--out", str(in_tmp)])
    assert "| strategy |" in (in_tmp / "transfer_results.md").read_text()
    assert (in_tmp / "forgetting.png").stat().st_size > 0
    frozen, full = results["frozen"], results["full"]
    # A frozen conv part cannot forget; one trained on the new classes does; the pretrained conv part helps.
    assert frozen.source_after == pytest.approx(frozen.source_before, abs=1e-6)
    assert full.source_after < full.source_before
    assert frozen.test_acc > results["scratch"].test_acc
