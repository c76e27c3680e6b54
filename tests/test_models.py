"""Architectures: Keras oracle parameter counts, shapes and gradients over the whole registry, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cnn.models import ARCHITECTURES, BatchNormCNN, ConvNet, FunctionalCNN, LeNet
from lightning_cnn.models.layers import KERAS_BN_EPS, KERAS_BN_MOMENTUM, Conv2D, Dense
from lightning_cnn.summary import keras_summary

# Keras 3's own counts for the slides' code (see the Keras parity notes): total, trainable, non-trainable.
KERAS_ORACLE = {
    LeNet: ((1, 28, 28), 62_226, 62_226, 0),
    FunctionalCNN: ((1, 64, 64), 35_813, 35_813, 0),
    BatchNormCNN: ((1, 28, 28), 358_210, 357_770, 440),
}


@pytest.mark.parametrize("arch", list(KERAS_ORACLE), ids=lambda a: a.__name__)
def test_parameter_counts_match_keras(arch):
    shape, total, trainable, non_trainable = KERAS_ORACLE[arch]
    net = arch()
    summary = keras_summary(net, shape)
    assert (summary.total_params, summary.trainable_params, summary.non_trainable_params) == (
        total,
        trainable,
        non_trainable,
    )
    assert sum(p.numel() for p in net.parameters()) == trainable


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("in_channels,size,num_classes", [(1, 28, 10), (3, 32, 7), (1, 64, 2)])
def test_forward_backward_over_registry(name, in_channels, size, num_classes):
    torch.manual_seed(0)
    net = ARCHITECTURES[name](
        **ARCHITECTURES.example(name), in_channels=in_channels, num_classes=num_classes, input_size=(size, size)
    )
    x = torch.randn(3, in_channels, size, size)
    out = net(x)
    assert out.shape == (3, net.num_outputs)
    assert net.num_outputs == (1 if num_classes == 2 else num_classes)
    out.sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()  # dropout off: the two paths must agree exactly
    assert torch.equal(net(x), net.head(net.backbone(x)))


def test_bn_cnn_layer_table_matches_slides():
    summary = keras_summary(BatchNormCNN(), (1, 28, 28))
    rows = [(r.type_name, r.output_shape, r.params) for r in summary.rows]
    assert rows[:4] == [
        ("Conv2D", (None, 32, 28, 28), 832),
        ("BatchNormalization", (None, 32, 28, 28), 128),
        ("Dropout", (None, 32, 28, 28), 0),
        ("MaxPooling2D", (None, 32, 14, 14), 0),
    ]
    assert ("Flatten", (None, 1152), 0) in rows
    assert rows[-3:] == [("Dense", (None, 100), 115_300), ("Dropout", (None, 100), 0), ("Dense", (None, 10), 1010)]


def test_variants_are_built_from_yaml_arguments():
    net = ConvNet(filters=[8, 16, 32], kernel_size=[5, 3, 3], padding="same", dense_units=[64, 32], batch_norm=True,
                  conv_dropout=[0.1, 0.2, 0.3], dense_dropout=0.5, activation="elu")  # fmt: skip
    names = [n for n, _ in net.backbone.named_children()]
    assert names == [
        "conv1",
        "bn1",
        "drop1",
        "pool1",
        "conv2",
        "bn2",
        "drop2",
        "pool2",
        "conv3",
        "bn3",
        "drop3",
        "pool3",
    ]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.2, 0.3, 0.5, 0.5]
    assert isinstance(net.backbone.conv1.activation, nn.ELU)
    assert net.backbone.conv2.layer.kernel_size == (3, 3)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_keras_switches():
    torch.manual_seed(0)
    net = BatchNormCNN(keras_init=True, keras_batchnorm=True)
    for m in net.modules():
        if isinstance(m, (Conv2D, Dense)):
            assert torch.count_nonzero(m.layer.bias) == 0
            fan_in = m.layer.weight[0].numel()
            fan_out = m.layer.weight.shape[0] * m.layer.weight[0, 0].numel()
            limit = (6 / (fan_in + fan_out)) ** 0.5  # glorot_uniform bound
            assert m.layer.weight.abs().max() <= limit
            assert m.layer.weight.abs().max() > 0.9 * limit
        if isinstance(m, nn.BatchNorm2d):
            assert (m.momentum, m.eps) == (KERAS_BN_MOMENTUM, KERAS_BN_EPS)
    default = BatchNormCNN()
    assert default.backbone.bn1.momentum == 0.1 and default.backbone.bn1.eps == 1e-5
    assert torch.count_nonzero(default.backbone.conv1.layer.bias) > 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"conv_dropout": [0.1, 0.2, 0.3]}, "conv_dropout"),
        ({"dense_dropout": 1.5}, "dense_dropout=1.5"),
        ({"activation": "swish2"}, "swish2"),
        ({"input_size": (6, 6)}, "input_size"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"layer_regularizers": {"conv9": {}}}, "conv9"),
    ],
)
def test_bad_options_fail_with_the_value_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeNet(**kwargs)
