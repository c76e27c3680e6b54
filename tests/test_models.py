"""Architectures: Keras oracle parameter counts, shapes, gradients, summaries and state dicts over the whole registry,
options (stride, pooling type and stride with Keras' output sizes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_cnn.models import ARCHITECTURES, BatchNormCNN, ConvNet, FunctionalCNN, LeNet
from lightning_cnn.models.layers import KERAS_BN_EPS, KERAS_BN_MOMENTUM, Conv2D, Dense, keras_same_padding
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


def _build(name: str, in_channels: int = 1, size: int = 32, num_classes: int = 10) -> nn.Module:
    return ARCHITECTURES[name](
        **ARCHITECTURES.example(name), in_channels=in_channels, num_classes=num_classes, input_size=(size, size)
    )


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("in_channels,size,num_classes", [(1, 28, 10), (3, 32, 7), (1, 64, 2)])
def test_forward_backward_over_registry(name, in_channels, size, num_classes):
    torch.manual_seed(0)
    net = _build(name, in_channels, size, num_classes)
    x = torch.randn(3, in_channels, size, size)
    out = net(x)
    assert out.shape == (3, net.num_outputs)
    assert net.num_outputs in ((1, 2) if num_classes == 2 else (num_classes,))  # one logit or two for binary
    out.sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()  # dropout off: the two paths must agree exactly
    assert torch.equal(net(x), net.head(net.backbone(x)))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_keras_summary_builds_over_registry(name):
    net = _build(name)
    summary = keras_summary(net, (1, 32, 32))
    assert summary.rows and all(row.output_shape is not None for row in summary.rows)
    assert summary.rows[-1].output_shape == (None, net.num_outputs)
    assert summary.trainable_params == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert "Total params:" in str(summary)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_state_dict_round_trips_over_registry(name):
    torch.manual_seed(0)
    source = _build(name).eval()
    torch.manual_seed(1)
    target = _build(name).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(target(x), source(x))


# Output sides computed by Keras 3.15.1 itself (Conv2D(2, k, strides=s, padding=...) and MaxPooling2D /
# AveragePooling2D(p, strides=s) on an n×n input); each also equals Keras' formula, checked below.
KERAS_CONV_SIDES = [  # (n, kernel, stride, padding, Keras' output side)
    (28, 3, 2, "same", 14),
    (7, 3, 2, "same", 4),
    (28, 4, 2, "same", 14),
    (28, 5, 3, "same", 10),
    (9, 4, 3, "same", 3),
    (10, 2, 2, "same", 5),
    (5, 1, 2, "same", 3),
    (28, 3, 2, "valid", 13),
]
KERAS_POOL_SIDES = [  # (n, pool_size, strides (None: pool_size), type, Keras' output side)
    (28, 3, 2, "max", 13),
    (7, 2, None, "avg", 3),
    (13, 3, 2, "avg", 6),
    (28, 2, 1, "max", 27),
    (9, 4, 3, "avg", 2),
]


@pytest.mark.parametrize("n,kernel,stride,padding,keras_side", KERAS_CONV_SIDES)
def test_conv_stride_and_padding_give_keras_output_size(n, kernel, stride, padding, keras_side):
    formula = -(-n // stride) if padding == "same" else (n - kernel) // stride + 1  # Keras' conv_output_length
    assert formula == keras_side
    net = ConvNet(input_size=(n, n), filters=[2], kernel_size=kernel, stride=stride, padding=padding, pool_size=0)
    assert net.backbone(torch.zeros(1, 1, n, n)).shape[-2:] == (keras_side, keras_side)


@pytest.mark.parametrize("n,pool_size,pool_stride,pool_type,keras_side", KERAS_POOL_SIDES)
def test_pooling_type_and_stride_give_keras_output_size(n, pool_size, pool_stride, pool_type, keras_side):
    assert (n - pool_size) // (pool_stride or pool_size) + 1 == keras_side  # "valid": floor, no padding
    net = ConvNet(input_size=(n, n), filters=[2], kernel_size=1, pool_type=pool_type, pool_size=pool_size,
                  pool_stride=pool_stride)  # fmt: skip
    pool = net.backbone.pool1
    assert isinstance(pool, nn.MaxPool2d if pool_type == "max" else nn.AvgPool2d)
    assert net.backbone(torch.zeros(1, 1, n, n)).shape[-2:] == (keras_side, keras_side)
    assert keras_summary(net).rows[1].type_name == ("MaxPooling2D" if pool_type == "max" else "AveragePooling2D")


def test_strided_same_padding_puts_the_odd_pixel_at_the_bottom_right_as_keras():
    # 9×10 input, kernel 4, stride 2: Keras pads 3 rows (1 top, 2 bottom) and 2 columns (1 left, 1 right). The
    # outputs also matched Keras 3.15.1's Conv2D(padding="same", strides=2) on the same weights to 3e-7.
    assert keras_same_padding(9, 4, 2) == (1, 2) and keras_same_padding(10, 4, 2) == (1, 1)
    torch.manual_seed(0)
    conv = Conv2D(2, 3, 4, stride=2, padding="same", activation="linear")
    x = torch.randn(1, 2, 9, 10)
    expected = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 2)), conv.layer.weight, conv.layer.bias, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(x).shape[-2:] == (5, 5)


def test_stride_per_layer_and_strided_model_matches_keras_counts():
    # Keras 3.15.1: Conv2D(8, 3, strides=2, "same") → AveragePooling2D(3, 2) → Conv2D(16, 3, "same") →
    # AveragePooling2D(3, 2) → Flatten → Dense 32 → Dense 10 on 28×28×1: these shapes, 3,658 parameters.
    net = ConvNet(filters=[8, 16], kernel_size=3, stride=[2, 1], padding="same", pool_type="avg", pool_size=3,
                  pool_stride=2, dense_units=[32])  # fmt: skip
    summary = keras_summary(net, (1, 28, 28))
    assert [(r.output_shape, r.params) for r in summary.rows] == [
        ((None, 8, 14, 14), 80),
        ((None, 8, 6, 6), 0),
        ((None, 16, 6, 6), 1168),
        ((None, 16, 2, 2), 0),
        ((None, 64), 0),
        ((None, 32), 2080),
        ((None, 10), 330),
    ]
    assert summary.total_params == 3658


def test_pooling_per_block_global_pooling_and_batch_norm_before_activation_match_keras():
    # Keras 3.15.1, 28×28×1: 5 × [Conv2D(f, 3, "same") → BatchNormalization → Activation("relu") → MaxPooling2D(2)
    # after blocks 1 and 3] with f = 24, 48, 48, 96, 96 → GlobalAveragePooling2D → Dropout(0.2) → Dense(10):
    # 158,266 parameters, 624 of them non-trainable (configs/best_fashion_mnist_epochs.yaml's network).
    net = ConvNet(filters=[24, 48, 48, 96, 96], kernel_size=3, padding="same", pool_size=[2, 0, 2, 0, 0],
                  batch_norm=True, batch_norm_before_activation=True, global_pool="avg", head_dropout=0.2,
                  dense_units=[])  # fmt: skip
    summary = keras_summary(net, (1, 28, 28))
    assert (summary.total_params, summary.non_trainable_params) == (158266, 624)
    names = [name for name, _ in net.backbone.named_children()][:4]
    assert names == ["conv1", "bn1", "act1", "pool1"]  # BatchNorm between the convolution and its ReLU
    assert net.backbone.conv1.activation.__class__ is nn.Identity
    assert [r.output_shape for r in summary.rows if "pool" in r.name] == [(None, 24, 14, 14), (None, 48, 7, 7),
                                                                          (None, 96, 1, 1)]  # fmt: skip
    x = torch.randn(2, 1, 28, 28)
    features = net.backbone(x)
    assert torch.allclose(net.head.global_pool(features).flatten(1), features.mean((2, 3)), atol=1e-6)
    # Keras 3.15.1: Conv2D(8, 3) → GlobalMaxPooling2D → Dense(3) on 28×28×1: 107 parameters.
    small = ConvNet(filters=[8], kernel_size=3, pool_size=0, global_pool="max", dense_units=[], num_classes=3)
    assert keras_summary(small, (1, 28, 28)).total_params == 107
    assert small(x).shape == (2, 3) and small(torch.randn(2, 1, 40, 33)).shape == (2, 3)  # any input size


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
        ({"pool_type": "min"}, r"pool_type='min' is not a pooling type; choose one of \['avg', 'max'\]"),
        (
            {"stride": [1, 2, 1]},
            r"stride=\[1, 2, 1\] has 3 values but the model has 2 such layers; give one value or 2",
        ),
        ({"stride": 0}, "stride=0"),
        ({"pool_stride": 0}, "pool_stride=0"),
        ({"pool_size": [2, 2, 2]}, r"pool_size=\[2, 2, 2\] has 3 values"),
        ({"global_pool": "sum"}, r"global_pool='sum' is not a pooling type.*or null to flatten"),
        ({"head_dropout": 1.0}, "head_dropout=1.0"),
    ],
)
def test_bad_options_fail_with_the_value_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        LeNet(**kwargs)
    assert "\n" not in str(err.value)
