"""The classifier module: losses with penalties, logging, predictions, checkpoints, subclassing, early stopping."""

from __future__ import annotations

import math

import numpy as np
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


def test_test_time_flip_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    plain, flipped = ImageClassifier(LeNet()), ImageClassifier(LeNet(), test_time_flip=True)
    flipped.net.load_state_dict(plain.net.state_dict())
    x = torch.randn(4, 1, 28, 28)
    plain.eval(), flipped.eval()
    with torch.no_grad():
        expected = (plain(x) + plain(x.flip(-1))) / 2
        assert torch.allclose(flipped.evaluation_logits(x), expected, atol=1e-6)
        assert not torch.allclose(plain.evaluation_logits(x), expected, atol=1e-3)
    # Prediction and the evaluation metrics use it; training steps see the plain forward pass.
    probs = torch.cat(_trainer().predict(flipped, DataLoader(TensorDataset(x), batch_size=4)))
    assert torch.allclose(probs, expected.softmax(1), atol=1e-6)
    loader = DataLoader(TensorDataset(x, torch.arange(4)), batch_size=4)
    (result,) = _trainer().test(flipped, loader, verbose=False)
    assert result["test/acc"] == pytest.approx((expected.argmax(1) == torch.arange(4)).float().mean().item())


def test_test_time_shift_averages_ten_views_with_the_edges_repeated():
    torch.manual_seed(0)
    plain, tta = ImageClassifier(LeNet()), ImageClassifier(LeNet(), test_time_flip=True, test_time_shift=2)
    tta.net.load_state_dict(plain.net.state_dict())
    x = torch.randn(3, 1, 28, 28)
    # The four moved copies written out by hand: 2 pixels right, left, down, up, the edge column or row repeated.
    right = torch.cat([x[..., :, :1], x[..., :, :1], x[..., :, :-2]], dim=-1)
    left = torch.cat([x[..., :, 2:], x[..., :, -1:], x[..., :, -1:]], dim=-1)
    down = torch.cat([x[..., :1, :], x[..., :1, :], x[..., :-2, :]], dim=-2)
    up = torch.cat([x[..., 2:, :], x[..., -1:, :], x[..., -1:, :]], dim=-2)
    views = [x, right, left, down, up]
    plain.eval(), tta.eval()
    with torch.no_grad():
        expected = sum(plain(v) + plain(v.flip(-1)) for v in views) / 10
        assert torch.allclose(tta.evaluation_logits(x), expected, atol=1e-5)
        tta.test_time_flip = False
        assert torch.allclose(tta.evaluation_logits(x), sum(plain(v) for v in views) / 5, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_test_time_shift_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match=rf"test_time_shift={bad!r}; use a whole number"):
        ImageClassifier(LeNet(), test_time_shift=bad)


def test_default_optimizer_is_keras_adam_over_trainable_parameters():
    model = ImageClassifier(LeNet())
    model.net.backbone.requires_grad_(False)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.net.head.parameters()}


def test_injected_optimizer_and_scheduler_are_built_and_kept_out_of_the_checkpoint(tmp_path):
    from functools import partial

    model = ImageClassifier(
        LeNet(),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0),
    )
    configured = model.configure_optimizers()
    assert isinstance(configured["optimizer"], torch.optim.SGD) and configured["optimizer"].defaults["lr"] == 0.05
    assert configured["lr_scheduler"]["monitor"] == "val/loss"  # a plateau scheduler watches the validation loss
    # Python callables are code, not config: left out of the hyperparameters, so the checkpoint loads weights-only.
    assert "optimizer" not in model.hparams and "lr_scheduler" not in model.hparams
    trainer = _trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, _loader(), _loader(seed=1))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert set(torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]) >= {"num_classes"}


def test_num_classes_and_input_shape_come_from_the_net():
    from lightning_cnn.models import TorchvisionNet

    model = ImageClassifier(TorchvisionNet(in_channels=3, num_classes=7, input_size=(64, 48), arch="resnet18"))
    assert (model.num_classes, model.input_shape) == (7, (3, 64, 48))
    assert model.example_input_array.shape == (1, 3, 64, 48)
    with pytest.raises(ValueError, match=r"num_classes=5 disagrees with the net's 10 \(LeNet\); leave num_classes out"):
        ImageClassifier(LeNet(), num_classes=5)
    with pytest.raises(ValueError, match="carries no num_classes attribute; give ImageClassifier num_classes=N"):
        ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    bare = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), num_classes=10)
    assert bare.input_shape is None and bare.example_input_array is None


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


# What Keras 3.15.1's EarlyStopping(patience, restore_best_weights=True) does when val_loss is NaN in some epochs
# (run once with Keras, values injected into its logs): NaN counts as no improvement. (values, patience, epochs
# run, best epoch)
KERAS_NAN_EARLY_STOPPING = [
    ([1.0, math.nan, 0.5, 0.4, 0.3], 3, 5, 4),
    ([1.0, math.nan, math.nan, math.nan, 0.3, 0.2], 2, 3, 0),
    ([1.0, 0.9, math.nan, 0.95, 0.96, 0.97, 0.5], 3, 5, 1),
]


@pytest.mark.parametrize(("values", "patience", "epochs", "best"), KERAS_NAN_EARLY_STOPPING)
def test_early_stopping_reads_a_nan_val_loss_as_keras_does(values, patience, epochs, best):
    model = ScriptedValLoss(values)
    stopper = EarlyStopping(monitor="val/loss", patience=patience, restore_best_weights=True)
    trainer = _trainer(max_epochs=len(values), limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                       callbacks=[stopper])  # fmt: skip
    trainer.fit(model, _loader(), _loader(seed=1))
    assert len(model.snapshots) == epochs and stopper.best_epoch == best
    final = model.state_dict()
    assert all(torch.equal(final[k], model.snapshots[best][k]) for k in final)


class _ConstantLogit(nn.Module):
    """A one-logit network whose logits lie in [0, 1] (so a metric could mistake them for probabilities)."""

    num_outputs = 1

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.bias = nn.Parameter(torch.zeros(1))
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return torch.full((x.shape[0], 1), self.value) + 0 * self.bias


def test_binary_accuracy_thresholds_logits_at_zero():
    # Logit 0.3 is class 1 (sigmoid 0.57); read as a probability it would be class 0 and accuracy 0.0.
    model = ImageClassifier(_ConstantLogit(0.3), num_classes=2)
    x = torch.zeros(8, 1, 28, 28)
    loader = DataLoader(TensorDataset(x, torch.ones(8, dtype=torch.long)), batch_size=4)
    metrics = _trainer().validate(model, loader, verbose=False)[0]
    assert metrics["val/acc"] == 1.0
    assert model.predicted_labels(model(x)).tolist() == [1] * 8
    assert model.probabilities(model(x)).argmax(1).tolist() == [1] * 8  # predictions follow the same rule


def test_confusion_matrix_comes_from_the_test_steps_without_another_forward_pass(tmp_path):
    from lightning_cnn.callbacks import ClassificationReport, TrainingPlots

    net = _ConstantLogit(-1.0)  # always class 0
    model = ImageClassifier(net, num_classes=2)
    y = torch.tensor([0, 0, 0, 1, 1, 0, 1, 0])
    loader = DataLoader(TensorDataset(torch.zeros(8, 1, 28, 28), y), batch_size=4)
    report = ClassificationReport()
    trainer = _trainer(default_root_dir=tmp_path, callbacks=[TrainingPlots(), report])
    trainer.test(model, loader, verbose=False)
    assert net.forward_calls == 2  # one per batch: the picture and the report reuse the steps' figures
    assert model.confusion_matrices["test"].tolist() == [[5, 0], [3, 0]]
    assert (tmp_path / "confusion_matrix.png").exists()
    assert list(tmp_path.glob("classification_report_test.csv"))
    # class 0: precision 5/8, recall 1, F1 10/13; class 1 never predicted: 0 (scikit-learn's zero_division=0).
    lines = {line.split()[0]: line.split()[1:] for line in report.last_report.splitlines()[1:] if line}
    assert lines["0"] == ["0.6250", "1.0000", "0.7692", "5"] and lines["1"] == ["0.0000", "0.0000", "0.0000", "3"]


def test_per_class_scores_agree_with_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    from lightning_cnn.callbacks.report import per_class_scores

    g = torch.Generator().manual_seed(0)
    y_true, y_pred = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (300,), generator=g)
    y_pred[y_pred == 4] = 3  # class 4 is never predicted
    confusion = torch.bincount(y_true * 5 + y_pred, minlength=25).reshape(5, 5)
    scores = per_class_scores(confusion)
    expected = precision_recall_fscore_support(y_true.numpy(), y_pred.numpy(), labels=range(5), zero_division=0)
    for ours, theirs in zip((scores[k] for k in ("precision", "recall", "f1", "support")), expected):
        assert ours.tolist() == pytest.approx(theirs.tolist())


def test_checkpoint_of_a_model_built_in_python_records_the_datamodules_preprocessing(tmp_path, mnist_dir):
    from lightning_cnn.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(mnist_dir), download=False, batch_size=32)
    model = ImageClassifier(LeNet())
    trainer = _trainer(default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]["preprocessing"]
    assert saved["class_names"] == [str(d) for d in range(10)] and saved["mean"] == [0.1307]
    assert ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt", net=LeNet()).preprocessing == dm.preprocessing


def test_evaluation_losses_are_means_over_images_not_over_batches():
    torch.manual_seed(0)
    model = ImageClassifier(LeNet(), num_classes=10)
    loader = _loader(n=33, batch_size=32)  # a full batch and a batch of one
    result = _trainer().validate(model, loader, verbose=False)[0]
    x, y = loader.dataset.tensors
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(x), y).item()
    assert result["val/data_loss"] == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_is_keras_and_the_scheduler_interval_is_configurable(tmp_path):
    torch.manual_seed(0)
    logits, target = torch.randn(6, 10), torch.randint(0, 10, (6,))
    smooth = ImageClassifier(LeNet(), label_smoothing=0.1)
    expected = -(F.log_softmax(logits, 1) * (F.one_hot(target, 10) * 0.9 + 0.01)).sum(1).mean()  # y(1-s) + s/C
    torch.testing.assert_close(smooth.compute_loss(logits, target), expected)
    binary = ImageClassifier(FunctionalCNN(), label_smoothing=0.2)
    logit, label = torch.randn(6, 1), torch.randint(0, 2, (6,))
    smoothed = label.float() * 0.8 + 0.1  # Keras' BinaryCrossentropy: y(1-s) + s/2
    torch.testing.assert_close(
        binary.compute_loss(logit, label), F.binary_cross_entropy_with_logits(logit.reshape(-1), smoothed)
    )
    with pytest.raises(ValueError, match=r"label_smoothing=1.5; use a value in \[0, 1\)"):
        ImageClassifier(LeNet(), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"lr_scheduler_interval='batch'; choose one of \['epoch', 'step'\]"):
        ImageClassifier(LeNet(), lr_scheduler_interval="batch")

    from functools import partial

    model = ImageClassifier(
        LeNet(),
        lr_scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01, total_steps=4),
        lr_scheduler_interval="step",
    )
    trainer = _trainer(max_epochs=2, default_root_dir=tmp_path)
    trainer.fit(model, _loader(n=32, batch_size=16))  # 2 steps per epoch: 4 in all, OneCycle's total
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4  # stepped after every optimizer step


def test_label_smoothing_matches_keras_own_losses():
    # Keras 3.15.1's CategoricalCrossentropy(from_logits=True, label_smoothing=0.1) and
    # BinaryCrossentropy(from_logits=True, label_smoothing=0.2) on these inputs (computed with Keras itself).
    rng = np.random.default_rng(0)
    logits, target = rng.normal(size=(6, 10)).astype("float32"), rng.integers(0, 10, 6)
    logit, label = rng.normal(size=(6, 1)).astype("float32"), rng.integers(0, 2, (6, 1))
    categorical = ImageClassifier(LeNet(), label_smoothing=0.1).compute_loss(torch.tensor(logits), torch.tensor(target))
    binary = ImageClassifier(FunctionalCNN(), label_smoothing=0.2).compute_loss(
        torch.tensor(logit), torch.tensor(label).reshape(-1)
    )
    assert categorical.item() == pytest.approx(2.535214900970459, abs=1e-6)
    assert binary.item() == pytest.approx(0.6279914379119873, abs=1e-6)
