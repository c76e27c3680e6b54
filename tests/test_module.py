"""The classifier module: losses with penalties, logging, predictions, checkpoints, subclassing, early stopping."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_cnn import ImageClassifier
from lightning_cnn.callbacks import EarlyStopping
from lightning_cnn.models import FunctionalCNN, LeNet
from lightning_cnn.regularization import L1L2, LayerRegularizers


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", deterministic=True)  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})


def _loader(n=32, size=28, num_classes=10, seed=0, batch_size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _regularized_lenet():
    return LeNet(layer_regularizers={"conv1": LayerRegularizers(kernel=L1L2(l2=0.5))})


@pytest.mark.parametrize("penalty_in_eval_loss", [True, False])
def test_val_loss_includes_the_penalty_like_keras(penalty_in_eval_loss):
    torch.manual_seed(0)
    model = ImageClassifier(_regularized_lenet(), penalty_in_eval_loss=penalty_in_eval_loss)
    trainer = _trainer(limit_train_batches=1)
    trainer.fit(model, _loader(), _loader(seed=1))
    m = trainer.callback_metrics
    assert m["val/reg_loss"] > 0.01
    expected = m["val/data_loss"] + (m["val/reg_loss"] if penalty_in_eval_loss else 0)
    assert torch.allclose(m["val/loss"], expected)
    assert torch.allclose(m["train/loss_epoch"], m["train/data_loss_epoch"] + m["train/reg_loss_epoch"])


def test_training_loss_is_data_loss_plus_penalty():
    torch.manual_seed(0)
    model = ImageClassifier(_regularized_lenet())
    x, y = next(iter(_loader()))
    model.log = lambda *a, **k: None
    loss = model.shared_step((x, y), "train")
    expected = F.cross_entropy(model(x), y) + 0.5 * model.net.backbone.conv1.layer.weight.square().sum()
    assert torch.allclose(loss, expected)


def test_binary_network_uses_bce_and_two_column_probabilities():
    torch.manual_seed(0)
    model = ImageClassifier(FunctionalCNN(), num_classes=2, input_shape=(1, 64, 64))
    assert model.binary
    x = torch.randn(4, 1, 64, 64)
    y = torch.tensor([0, 1, 1, 0])
    logits = model(x)
    assert torch.allclose(model.compute_loss(logits, y), F.binary_cross_entropy_with_logits(logits[:, 0], y.float()))
    probs = model.predict_step(x, 0)
    assert probs.shape == (4, 2)
    assert torch.allclose(probs[:, 1], torch.sigmoid(logits[:, 0]))
    assert torch.allclose(probs.sum(1), torch.ones(4))


def test_predict_returns_class_probabilities():
    model = ImageClassifier(LeNet())
    probs = torch.cat(_trainer().predict(model, _loader()))
    assert probs.shape == (32, 10)
    assert torch.allclose(probs.sum(1), torch.ones(32), atol=1e-6) and (probs >= 0).all()


def test_default_optimizer_is_keras_adam_over_trainable_parameters():
    model = ImageClassifier(LeNet())
    model.net.backbone.requires_grad_(False)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.net.head.parameters()}


class LabelSmoothingClassifier(ImageClassifier):
    """What a downstream project does: override one documented method."""

    def __init__(self, net: nn.Module, num_classes: int = 10, input_shape=(1, 28, 28), smoothing: float = 0.1):
        super().__init__(net, num_classes, input_shape)
        self.smoothing = smoothing

    def compute_loss(self, logits, target):
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)


def test_subclass_overrides_the_loss_and_still_trains():
    torch.manual_seed(0)
    model = LabelSmoothingClassifier(LeNet(), smoothing=0.3)
    x, y = next(iter(_loader()))
    assert torch.allclose(model.compute_loss(model(x), y), F.cross_entropy(model(x), y, label_smoothing=0.3))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, _loader(), _loader(seed=1))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "val/acc" in trainer.callback_metrics


class ScriptedValLoss(ImageClassifier):
    """Reports a fixed val/loss per epoch and records the weights each epoch ended with."""

    def __init__(self, losses):
        super().__init__(LeNet())
        self.losses = losses
        self.snapshots = []

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.tensor(self.losses[self.current_epoch]))

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.snapshots.append({k: v.clone() for k, v in self.state_dict().items()})


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_restores_best_weights(restore):
    torch.manual_seed(0)
    model = ScriptedValLoss([3.0, 1.0, 2.0, 2.5, 0.5, 0.1])
    stopper = EarlyStopping(monitor="val/loss", patience=2, restore_best_weights=restore)
    trainer = _trainer(max_epochs=6, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                       callbacks=[stopper])  # fmt: skip
    trainer.fit(model, _loader(), _loader(seed=1))
    assert len(model.snapshots) == 4  # epochs 0..3: stopped after two epochs without beating 1.0
    assert stopper.stopped_epoch == 3
    final = model.state_dict()
    expected = model.snapshots[1] if restore else model.snapshots[3]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert not all(torch.equal(final[k], model.snapshots[3][k]) for k in expected) or not restore
    if restore:
        assert stopper.best_epoch == 1
        state = stopper.state_dict()
        clone = EarlyStopping(monitor="val/loss", restore_best_weights=True)
        clone.load_state_dict(state)
        assert clone.best_epoch == 1 and torch.equal(clone.best_weights["net.head.output.layer.bias"],
                                                     expected["net.head.output.layer.bias"])  # fmt: skip
