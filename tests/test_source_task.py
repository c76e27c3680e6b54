"""SourceTaskMonitor: the source task's accuracy while fine-tuning, checked against the source model's own accuracy
(frozen backbone), a hand computation (trainable backbone) and forgetting (large learning rate), on tiny IDX data."""

from __future__ import annotations

import csv
import os
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from lightning_cnn import ImageClassifier
from lightning_cnn.callbacks import FreezeBackbone, SourceTaskMonitor
from lightning_cnn.checkpoints import CheckpointError
from lightning_cnn.cli import CNNCLI
from lightning_cnn.models import BatchNormCNN, LeNet
from tests.conftest import CONFIGS, cli_error_line, make_datamodule, write_fake_mnist

TRANSFER = CONFIGS / "transfer"
SMOKE = ["--trainer", str(CONFIGS / "trainer" / "smoke.yaml")]
SOURCE_CLASSES = [0, 1, 2, 3, 4]
TARGET_CLASSES = [5, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A source checkpoint (the transfer experiment's pretrain config, a few batches on fake data) and the data."""
    folder = tmp_path_factory.mktemp("source")
    data_dir = write_fake_mnist(folder / "mnist", n_train=600, n_test=160)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = CNNCLI(
            args=[
                "fit", "--config", str(TRANSFER / "pretrain_fashion_0to4.yaml"), *SMOKE,
                "--trainer.max_epochs", "2", "--data.init_args.batch_size", "32", "--test_after_fit", "false",
                "--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "false",
            ]
        )  # fmt: skip
    finally:
        os.chdir(cwd)
    return str(folder / cli.trainer.checkpoint_callback.best_model_path), data_dir


def source_data(data_dir: Path, **overrides):
    return make_datamodule("fashion_mnist", data_dir, data_dir=str(data_dir), classes=SOURCE_CLASSES, **overrides)


def target_data(data_dir: Path):
    return make_datamodule("fashion_mnist", data_dir, data_dir=str(data_dir), classes=TARGET_CLASSES, batch_size=16)


def target_module(lr: float = 1e-3, net=None) -> ImageClassifier:
    net = net or BatchNormCNN(in_channels=1, num_classes=5, input_size=(28, 28))
    return ImageClassifier(net, optimizer=partial(torch.optim.Adam, lr=lr))


def fit(module, data_dir, callbacks, tmp_path, **trainer_kwargs) -> pl.Trainer:
    settings = dict(max_epochs=2, limit_train_batches=3, limit_val_batches=2, enable_progress_bar=False)
    trainer = pl.Trainer(
        **{**settings, **trainer_kwargs}, enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="", version=0),
    )  # fmt: skip
    trainer.fit(module, datamodule=target_data(data_dir))
    return trainer


def own_accuracy(checkpoint: str, data_dir: Path) -> float:
    """The source model's own accuracy on its test split, as `test` reports it."""
    model = ImageClassifier.load_from_checkpoint(checkpoint)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(model, datamodule=source_data(data_dir), verbose=False)[0]["test/acc"]


def csv_rows(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "version_0" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_frozen_backbone_keeps_the_source_accuracy_every_epoch(pretrained, tmp_path):
    checkpoint, data_dir = pretrained
    monitor = SourceTaskMonitor(checkpoint, source_data(data_dir), verbose=False)
    trainer = fit(target_module(lr=0.05), data_dir, [FreezeBackbone(backbone_weights=checkpoint), monitor], tmp_path)

    own = own_accuracy(checkpoint, data_dir)
    assert monitor.before == pytest.approx(own, abs=1e-6)
    assert [epoch for epoch, _ in monitor.history] == [0, 1]
    for _, accuracy in monitor.history:
        assert accuracy == pytest.approx(own, abs=1e-6)
    assert float(trainer.callback_metrics["source/acc"]) == pytest.approx(own, abs=1e-6)
    # One value per epoch, in the epoch's validation row (beside val/acc).
    logged = [row for row in csv_rows(tmp_path) if row.get("source/acc")]
    assert [int(row["epoch"]) for row in logged] == [0, 1]
    assert all(row["val/acc"] for row in logged)
    # The checkpoint carries the monitor's state.
    saved = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["callbacks"]
    assert saved[monitor.state_key]["before"] == monitor.before


def test_trainable_backbone_at_a_large_learning_rate_forgets(pretrained, tmp_path):
    checkpoint, data_dir = pretrained
    monitor = SourceTaskMonitor(checkpoint, source_data(data_dir), verbose=False)
    unfrozen = FreezeBackbone(backbone_weights=checkpoint, unfreeze_at_epoch=0, backbone_lr_ratio=1.0, verbose=False)
    fit(target_module(lr=0.1), data_dir, [unfrozen, monitor], tmp_path, max_epochs=1, limit_val_batches=0)

    assert monitor.before == pytest.approx(own_accuracy(checkpoint, data_dir), abs=1e-6)
    assert monitor.before > 0.5  # the source model learned its task: there is something to forget
    assert monitor.history[-1][1] < monitor.before - 0.1


class ModeProbe(pl.Callback):
    """Records, after the monitor's end-of-epoch evaluation, which backbone layers are in training mode."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.modes.append({name: m.training for name, m in pl_module.net.backbone.named_modules() if name})


def test_logged_value_is_the_current_backbone_under_the_source_head(pretrained, tmp_path):
    checkpoint, data_dir = pretrained
    monitor = SourceTaskMonitor(checkpoint, source_data(data_dir, batch_size=7), verbose=False)
    probe = ModeProbe()
    # Frozen (BatchNorm in eval mode) in epoch 0, all trainable in epoch 1; no validation, so the monitor evaluates
    # at train epoch end, while the module is in training mode.
    unfreeze = FreezeBackbone(backbone_weights=checkpoint, unfreeze_at_epoch=1, backbone_lr_ratio=1.0, verbose=False)
    module = target_module(lr=0.02)
    trainer = fit(module, data_dir, [unfreeze, monitor, probe], tmp_path, limit_val_batches=0)

    frozen_epoch, unfrozen_epoch = probe.modes
    assert all(not training for name, training in frozen_epoch.items() if name.startswith("bn"))
    assert all(training for name, training in frozen_epoch.items() if not name.startswith("bn"))
    assert all(unfrozen_epoch.values())

    source = ImageClassifier.load_from_checkpoint(checkpoint).eval()
    data = source_data(data_dir)
    data.setup("test")
    images, labels = data.test_set[list(range(len(data.test_set)))]
    backbone = module.net.backbone.eval()
    with torch.no_grad():
        by_hand = (source.net.head(backbone(images)).argmax(dim=1) == labels).float().mean().item()
    assert monitor.history[-1] == (1, pytest.approx(by_hand, abs=1e-6))
    assert float(trainer.callback_metrics["source/acc"]) == pytest.approx(by_hand, abs=1e-6)
    # The unfrozen epoch changed the backbone, so the value above is the current backbone's, not the source's own
    # (both accuracies can be 1.0 on this easy fake data, so the weights are compared, not the accuracies).
    pretrained_conv = source.net.backbone.conv1.layer.weight
    assert not torch.allclose(module.net.backbone.conv1.layer.weight, pretrained_conv)
    assert [int(row["epoch"]) for row in csv_rows(tmp_path) if row.get("source/acc")] == [0, 1]


def test_bad_checkpoint_path_is_one_line_naming_it(pretrained, tmp_path, capsys, monkeypatch):
    _, data_dir = pretrained
    missing = tmp_path / "nowhere" / "pretrain.ckpt"
    with pytest.raises(CheckpointError, match=str(missing)) as error:
        SourceTaskMonitor(str(missing), source_data(data_dir))
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)

    monkeypatch.chdir(tmp_path)
    line = cli_error_line(capsys, monitored_fit_args(str(missing), data_dir, tmp_path))
    assert str(missing) in line


def test_checkpoint_that_does_not_fit_the_run_is_refused(pretrained, tmp_path):
    checkpoint, data_dir = pretrained
    other_architecture = target_module(net=LeNet(in_channels=1, num_classes=5, input_size=(28, 28)))
    with pytest.raises(CheckpointError, match="does not fit the network being trained"):
        fit(other_architecture, data_dir, [SourceTaskMonitor(checkpoint, source_data(data_dir))], tmp_path)
    wrong_classes = make_datamodule("fashion_mnist", data_dir, data_dir=str(data_dir), classes=[0, 1, 2])
    with pytest.raises(CheckpointError, match="was trained on 5 classes"):
        fit(target_module(), data_dir, [SourceTaskMonitor(checkpoint, wrong_classes)], tmp_path)
    with pytest.raises(ValueError, match="split='train'"):
        SourceTaskMonitor(checkpoint, source_data(data_dir), split="train")


def monitored_fit_args(checkpoint: str, data_dir: Path, folder: Path) -> list[str]:
    """`fit` of the transfer experiment's fine-tune config with the monitor in its YAML callbacks."""
    config = folder / "monitored.yaml"
    config.write_text(
        f"""
trainer:
  callbacks:
    - class_path: lightning_cnn.callbacks.SourceTaskMonitor
      init_args:
        checkpoint: {checkpoint}
        data:
          class_path: lightning_cnn.data.FashionMNISTDataModule
          init_args: {{classes: {SOURCE_CLASSES}, data_dir: {data_dir}, download: false}}
    - class_path: lightning_cnn.callbacks.FreezeBackbone
      init_args: {{backbone_weights: {checkpoint}}}
"""
    )
    data = ["--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "false"]
    data += ["--data.init_args.train_size", "40", "--data.init_args.val_split", "20"]  # the fake data is small
    finetune = ["--config", str(TRANSFER / "finetune_fashion_5to9.yaml")]
    return ["fit", *finetune, "--config", str(config), *SMOKE, *data, "--test_after_fit", "false"]


def test_usable_from_yaml(pretrained, in_tmp):
    checkpoint, data_dir = pretrained
    cli = CNNCLI(args=monitored_fit_args(checkpoint, data_dir, in_tmp))
    assert "source/acc" in cli.trainer.callback_metrics
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, SourceTaskMonitor))
    assert monitor.history and monitor.history[-1][1] == pytest.approx(
        float(cli.trainer.callback_metrics["source/acc"])
    )
    assert monitor.before == pytest.approx(monitor.history[-1][1], abs=1e-6)  # frozen backbone


def test_state_dict_round_trip(pretrained, tmp_path):
    checkpoint, data_dir = pretrained
    monitor = SourceTaskMonitor(checkpoint, source_data(data_dir))
    monitor.before, monitor.history = 0.9, [(0, 0.85), (1, 0.8)]
    torch.save(monitor.state_dict(), tmp_path / "state.pt")
    resumed = SourceTaskMonitor(checkpoint, source_data(data_dir))
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # plain data only
    resumed._apply_restored()  # what on_fit_start does when fitting resumes
    assert (resumed.before, resumed.history) == (0.9, [(0, 0.85), (1, 0.8)])
    assert resumed.state_key == monitor.state_key


def test_testing_an_earlier_checkpoint_after_fit_keeps_the_whole_history(pretrained, in_tmp):
    # The best checkpoint is the first epoch's (monitor: epoch, mode: min); testing it after fit restores callback
    # states, which must not cut the run's history back to that epoch.
    checkpoint, data_dir = pretrained
    args = monitored_fit_args(checkpoint, data_dir, in_tmp)[:-2]  # test after fit (the default)
    cli = CNNCLI(args=[*args, "--trainer.max_epochs", "2", "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"])
    assert Path(cli.trainer.checkpoint_callback.best_model_path).name == "best-epoch00.ckpt"
    assert "test/acc" in cli.trainer.callback_metrics
    monitor = next(c for c in cli.trainer.callbacks if isinstance(c, SourceTaskMonitor))
    assert [epoch for epoch, _ in monitor.history] == [0, 1]
