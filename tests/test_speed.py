"""The CPU speed options keep results what they were: the package's Dropout is dropout, channels_last only changes
the layout, and each option is a YAML key that does what it says (the speed itself is measured by the benchmarks,
never asserted here)."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_cnn import ImageClassifier, hardware
from lightning_cnn.data import FashionMNISTDataModule
from lightning_cnn.models import BatchNormCNN, ConvNet, LeNet, TorchvisionNet
from lightning_cnn.models.layers import Dropout
from lightning_cnn.regularization import L1L2, LayerRegularizers
from tests.conftest import CONFIGS, cli_error_line, write_fake_mnist


@pytest.mark.parametrize("p", [0.25, 0.5, 0.3, 0.9])
def test_dropout_drops_at_the_rate_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    n = 400_000
    x = torch.ones(n, requires_grad=True)
    out = Dropout(p).train()(x)
    kept = out != 0
    rounded = round(p * 65536) / 65536
    # The kept fraction is Binomial(n, 1 - p): within 5 standard deviations.
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    # Kept values are scaled by 1 / (1 - p) (p rounded to 16 bits), dropped ones are exactly zero.
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - rounded)))
    assert abs(rounded - p) <= 0.5 / 65536
    # The gradient goes through the kept elements only, with the same scale.
    out.backward(torch.full_like(out, 2.0))
    assert torch.equal(x.grad, 2.0 * out.detach())


def test_dropout_is_identity_in_eval_and_at_rate_zero():
    x = torch.randn(8, 3, 5, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_masks_are_seeded_independent_and_keep_layout_and_dtype():
    layer = Dropout(0.5).train()
    x = torch.randn(16, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    first = layer(x)
    second = layer(x)
    torch.manual_seed(1)
    assert torch.equal(layer(x), first)  # seed_everything fixes the draws
    assert not torch.equal(first, second)  # and each call draws anew
    assert first.is_contiguous(memory_format=torch.channels_last)
    # Each element is dropped or scaled, never anything else.
    assert torch.all((first == 0) | torch.isclose(first, 2 * x))
    # Neighbouring elements (the four 16-bit lanes of one random word) are not correlated.
    flat = (first.flatten() != 0).float()
    pairs = flat[:-1] * flat[1:]
    assert abs(pairs.mean().item() - 0.25) < 0.02
    half = Dropout(0.25).train()(torch.ones(1000, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_the_slides_nets_use_the_package_dropout():
    net = BatchNormCNN(conv_dropout=0.25, dense_dropout=0.5)
    rates = [m.p for m in net.modules() if isinstance(m, Dropout)]
    assert rates == [0.25, 0.25, 0.25, 0.5]


def _fit_tiny(tmp_path, model: ImageClassifier, **trainer_args) -> pl.Trainer:
    data = FashionMNISTDataModule(
        data_dir=str(write_fake_mnist(tmp_path / "mnist", n_train=64, n_test=16)),
        download=False,
        batch_size=16,
        val_split=16,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer_args,
    )
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.mark.parametrize(
    ("memory_format", "channels_last"), [("auto", True), ("channels_last", True), ("contiguous", False)]
)
def test_memory_format_lays_out_the_weights_and_batches(tmp_path, memory_format, channels_last):
    model = ImageClassifier(LeNet(), memory_format=memory_format)
    _fit_tiny(tmp_path, model)
    weight = model.net.backbone.conv2.layer.weight  # (conv1 has one input channel: both layouts at once)
    assert weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert weight.is_contiguous() is not channels_last

    seen = []
    model.net.backbone.conv2.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    model.eval()(torch.randn(2, 1, 28, 28))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) is channels_last


def test_channels_last_changes_the_layout_not_the_results():
    torch.manual_seed(0)
    net = BatchNormCNN()
    x = torch.randn(4, 1, 28, 28)
    expected = net.eval()(x)
    model = ImageClassifier(net, memory_format="channels_last")
    model._apply_memory_format(torch.device("cpu"))
    assert torch.allclose(model.eval()(x), expected, atol=1e-5)
    # A checkpoint's state dict loads into either layout.
    plain = ImageClassifier(BatchNormCNN(), memory_format="contiguous")
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(plain.eval()(x), expected, atol=1e-5)


L2_KERNELS = LayerRegularizers(kernel=L1L2(l2=1e-4))


@pytest.mark.parametrize(
    "net",
    [
        pytest.param(lambda: LeNet(regularizers=L2_KERNELS), id="lenet-l2"),
        pytest.param(
            lambda: ConvNet(filters=[8, 8], kernel_size=[3, 1], pool_size=0, dense_units=[], regularizers=L2_KERNELS),
            id="1x1-kernel-l2",
        ),
        pytest.param(
            lambda: TorchvisionNet(arch="mobilenet_v3_small", weights=None, num_classes=10, in_channels=1),
            id="depthwise",
        ),
    ],
)
def test_every_gradient_has_its_parameters_strides_as_ddp_requires(net):
    # A 1-channel or 1x1 kernel is the same bytes in both layouts; a regularizer's gradient used to come back with
    # NCHW strides, and DDP copies (with a "Grad strides do not match bucket view strides" warning) on a mismatch.
    model = ImageClassifier(net(), num_classes=10, memory_format="channels_last")
    model._apply_memory_format(torch.device("cpu"))
    logits = model(torch.randn(4, 1, 28, 28))
    (torch.nn.functional.cross_entropy(logits, torch.arange(4)) + model.regularization_loss()).backward()
    mismatched = {
        name: (p.stride(), p.grad.stride()) for name, p in model.named_parameters() if p.stride() != p.grad.stride()
    }
    assert not mismatched


def test_a_kernel_frozen_when_the_layout_is_set_gets_its_strides_once_unfrozen():
    model = ImageClassifier(LeNet(regularizers=L2_KERNELS), num_classes=10, memory_format="channels_last")
    model.net.requires_grad_(False)  # FreezeBackbone's setup runs before the module's
    model._apply_memory_format(torch.device("cpu"))
    assert not any(p.requires_grad for p in model.net.parameters())
    model.net.requires_grad_(True)
    (model(torch.randn(4, 1, 28, 28)).sum() + model.regularization_loss()).backward()
    assert all(p.stride() == p.grad.stride() for p in model.net.parameters())


def test_a_bad_memory_format_is_refused():
    with pytest.raises(ValueError, match="memory_format='nhwc'; choose one of"):
        ImageClassifier(LeNet(), memory_format="nhwc")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit_tiny(tmp_path, ImageClassifier(LeNet()), precision="bf16-mixed")
    warned = any("no bfloat16 instructions" in str(w.message) for w in record)
    assert warned is not native


def test_compile_compiles_the_net_in_place(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    model = ImageClassifier(LeNet(), compile=True)
    keys = set(model.state_dict())
    _fit_tiny(tmp_path, model)
    assert compiled == [model.net]  # once, in place (not wrapped: the state dict keeps its keys)
    assert set(model.state_dict()) == keys


def test_cpu_threads_sets_torchs_threads(tmp_path, monkeypatch):
    from lightning_cnn.cli import CNNCLI

    data = write_fake_mnist(tmp_path / "mnist", n_train=64, n_test=16)
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    CNNCLI(
        args=[
            "fit",
            "--config",
            str(CONFIGS / "lenet_fashion_mnist.yaml"),
            "--trainer.fast_dev_run",
            "true",
            "--data.init_args.data_dir",
            str(data),
            "--data.init_args.download",
            "false",
            "--cpu_threads",
            "1",
        ]
    )
    assert seen == [1]
    assert torch.get_num_threads() == before  # (set_num_threads was intercepted)


def test_cpu_threads_must_be_positive(capsys):
    line = cli_error_line(capsys, ["fit", "--config", "configs/lenet_fashion_mnist.yaml", "--cpu_threads", "0"])
    assert "cpu_threads" in line
