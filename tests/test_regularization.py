"""Keras-exact penalties against values computed by hand on small tensors, for every kind and target."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cnn.models import LeNet
from lightning_cnn.models.layers import Conv2D, Dense
from lightning_cnn.regularization import L1L2, LayerRegularizers, regularization_loss, resolve_layer_regularizers


def _dense(**regs) -> Dense:
    layer = Dense(2, 2, activation="relu", regularizers=LayerRegularizers(**regs))
    with torch.no_grad():
        layer.layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        layer.layer.bias.copy_(torch.tensor([0.5, -1.5]))
    return layer


def test_l1_l2_l1l2_values():
    x = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert L1L2(l1=0.01)(x).item() == pytest.approx(0.01 * 10)  # sum |x| = 10
    assert L1L2(l2=0.01)(x).item() == pytest.approx(0.01 * 30)  # sum x² = 30, no ½
    assert L1L2(l1=0.1, l2=0.2)(x).item() == pytest.approx(0.1 * 10 + 0.2 * 30)
    assert not L1L2() and L1L2(l2=1e-4)
    with pytest.raises(ValueError, match="l2=-1"):
        L1L2(l2=-1)


@pytest.mark.parametrize(
    "target,expected",
    [
        ("kernel", 0.1 * 10 + 0.01 * 30),  # |w| = 1+2+3+4, w² = 1+4+9+16
        ("bias", 0.1 * 2.0 + 0.01 * (0.25 + 2.25)),  # |b| = 0.5+1.5
    ],
)
def test_kernel_and_bias_penalties(target, expected):
    layer = _dense(**{target: L1L2(l1=0.1, l2=0.01)})
    layer(torch.zeros(1, 2))
    assert layer.penalty().item() == pytest.approx(expected)


def test_activity_penalty_is_on_the_activated_output_divided_by_batch_size():
    layer = _dense(activity=L1L2(l1=0.1, l2=0.01))
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    # pre-activation: [1-2+0.5, 3-4-1.5] = [-0.5, -2.5] -> relu 0,0; [2+0.5, 6-1.5] = [2.5, 4.5]; [0.5, -1.5] -> 0.5, 0
    out = layer(x)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0], [2.5, 4.5], [0.5, 0.0]]))
    l1 = 2.5 + 4.5 + 0.5
    l2 = 2.5**2 + 4.5**2 + 0.5**2
    assert layer.penalty().item() == pytest.approx((0.1 * l1 + 0.01 * l2) / 3)


def test_conv_kernel_penalty_and_model_sum():
    conv = Conv2D(1, 2, 3, regularizers=LayerRegularizers(kernel=L1L2(l2=1e-4)))
    expected_conv = 1e-4 * conv.layer.weight.detach().square().sum()
    dense = _dense(bias=L1L2(l1=1.0))
    net = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2), nn.Identity())
    net.append(dense)
    net(torch.randn(2, 1, 5, 5))
    assert conv.penalty().item() == pytest.approx(expected_conv.item())
    assert regularization_loss(net).item() == pytest.approx(expected_conv.item() + 2.0)


def test_frozen_weights_are_not_penalized_like_keras():
    layer = _dense(kernel=L1L2(l1=1.0), bias=L1L2(l1=1.0))
    layer.layer.weight.requires_grad_(False)
    assert layer.penalty().item() == pytest.approx(2.0)  # only the bias is trainable


def test_penalty_gradient_is_2_lambda_w():
    layer = _dense(kernel=L1L2(l2=0.5))
    layer.penalty().backward()
    assert torch.allclose(layer.layer.weight.grad, 2 * 0.5 * layer.layer.weight.detach())


def test_no_regularizer_gives_zero():
    net = LeNet()
    net(torch.zeros(2, 1, 28, 28))
    assert regularization_loss(net).item() == 0.0


def test_model_wide_default_and_per_layer_override():
    regs = resolve_layer_regularizers(
        ["conv1", "conv2", "dense1"],
        LayerRegularizers(kernel=L1L2(l2=1e-3), activity=L1L2(l1=1e-5)),
        {"conv2": LayerRegularizers(kernel=L1L2(l1=1e-2))},
    )
    assert regs["conv1"] == LayerRegularizers(kernel=L1L2(l2=1e-3), activity=L1L2(l1=1e-5))
    assert regs["conv2"] == LayerRegularizers(kernel=L1L2(l1=1e-2), activity=L1L2(l1=1e-5))
    net = LeNet(
        regularizers=LayerRegularizers(bias=L1L2(l2=0.1)),
        layer_regularizers={"conv1": LayerRegularizers(kernel=L1L2(l2=1e-4))},
    )
    conv1, conv2 = net.backbone.conv1, net.backbone.conv2
    expected = 1e-4 * conv1.layer.weight.detach().square().sum() + sum(
        0.1 * m.layer.bias.detach().square().sum() for m in (conv1, conv2, net.head.dense1, net.head.output)
    )
    net(torch.zeros(1, 1, 28, 28))
    assert regularization_loss(net).item() == pytest.approx(expected.item(), rel=1e-6)
