"""The slides' CNNs as presets of ConvNet: defaults from the PRESETS table, the same defaults through jsonargparse and
``--print_config``, printed configs that build the same model, keyword-only arguments, and subclasses of a preset."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from lightning_cnn.cli import CNNCLI
from lightning_cnn.models import ARCHITECTURES, BatchNormCNN, ConvNet, FunctionalCNN, LeNet
from lightning_cnn.models.convnet import PRESETS
from lightning_cnn.models.layers import Dense
from tests.conftest import CONFIGS, write_fake_mnist

PRESET_CLASSES = {"lenet": LeNet, "functional_cnn": FunctionalCNN, "batchnorm_cnn": BatchNormCNN}


def _plain(value: Any) -> Any:
    """Tuples as lists, as YAML and jsonargparse give them back."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _architecture(net: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in net.state_dict().items()]


class WiderLeNet(LeNet):
    """A user's subclass of a preset: one argument of its own, the rest forwarded."""

    def __init__(self, widen: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("filters", [4 * widen, 12 * widen])
        super().__init__(**kwargs)
        self.widen = widen


def test_every_preset_is_a_registered_convnet():
    assert set(PRESETS) == set(PRESET_CLASSES)
    for name, cls in PRESET_CLASSES.items():
        assert issubclass(cls, ConvNet) and ARCHITECTURES[name] is cls


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_defaults_are_its_table_entry_and_convnets_otherwise(name):
    cls = PRESET_CLASSES[name]
    convnet = inspect.signature(ConvNet).parameters
    params = inspect.signature(cls).parameters
    assert list(params) == list(convnet)
    for arg, param in params.items():
        assert param.default == PRESETS[name].get(arg, convnet[arg].default), arg
        assert param.kind is inspect.Parameter.KEYWORD_ONLY
    net = cls()
    settings = {**{k: p.default for k, p in convnet.items()}, **PRESETS[name]}
    convs = [m.layer for n, m in net.backbone.named_children() if n.startswith("conv")]
    assert [c.out_channels for c in convs] == list(settings["filters"])
    assert {c.kernel_size for c in convs} == {(settings["kernel_size"],) * 2}
    hidden = [m.layer.out_features for m in net.head.children() if isinstance(m, Dense)][:-1]
    assert hidden == list(settings["dense_units"])
    assert net.input_size == tuple(settings["input_size"]) and net.num_classes == settings["num_classes"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == settings["batch_norm"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_jsonargparse_sees_the_preset_defaults_and_the_dump_builds_the_same_model(name):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=ConvNet)  # as LightningCLI sees ImageClassifier's `net`
    cfg = parser.parse_args([f"--net={ARCHITECTURES.class_path(name)}"])
    init_args = cfg.net.init_args
    for arg, value in PRESETS[name].items():
        assert _plain(init_args[arg]) == _plain(value), arg

    dumped = parser.dump(cfg)
    printed = yaml.safe_load(dumped)["net"]["init_args"]
    assert {k: printed[k] for k in PRESETS[name]} == {k: _plain(v) for k, v in PRESETS[name].items()}
    again = parser.parse_string(dumped)
    torch.manual_seed(0)
    rebuilt = parser.instantiate(again).net
    torch.manual_seed(0)
    direct = PRESET_CLASSES[name]()
    assert type(rebuilt) is type(direct) and _architecture(rebuilt) == _architecture(direct)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), direct.state_dict().values()))


def test_yaml_overrides_any_convnet_option_of_a_preset():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=ConvNet)
    cfg = parser.parse_string(
        "net:\n  class_path: lightning_cnn.models.LeNet\n  init_args:\n"
        "    conv_dropout: 0.1\n    keras_init: true\n    pool_type: avg\n    stride: [1, 2]\n"
        "    layer_regularizers: {conv1: {kernel: {l2: 1.0e-4}}}\n"
    )
    net = parser.instantiate(cfg).net
    assert isinstance(net, LeNet) and isinstance(net.backbone.pool1, nn.AvgPool2d)
    assert net.backbone.drop1.p == 0.1 and net.backbone.conv2.layer.stride == (2, 2)
    assert net.backbone.conv1.regularizers.kernel is not None and net.backbone.conv2.regularizers.kernel is None
    assert torch.count_nonzero(net.head.output.layer.bias) == 0  # keras_init: zero biases


def test_print_config_shows_lenets_own_settings_and_builds_the_same_model(in_tmp, capsys):
    config = CONFIGS / "lenet_fashion_mnist.yaml"
    data = ["--data.init_args.data_dir", str(write_fake_mnist(in_tmp / "mnist")), "--data.init_args.download", "false"]
    with pytest.raises(SystemExit):
        CNNCLI(args=["fit", "--config", str(config), *data, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    net = printed["model"]["init_args"]["net"]
    assert net["class_path"] == "lightning_cnn.models.LeNet"
    assert {k: net["init_args"][k] for k in ("filters", "kernel_size", "padding", "pool_size", "dense_units")} == {
        "filters": [4, 12],
        "kernel_size": 5,
        "padding": "valid",
        "pool_size": 2,
        "dense_units": [300],
    }
    (in_tmp / "printed.yaml").write_text(yaml.safe_dump(printed))
    one_batch = ["--trainer.fast_dev_run", "1", "--test_after_fit", "false"]
    original = CNNCLI(args=["fit", "--config", str(config), *data, *one_batch]).model.net
    rebuilt = CNNCLI(args=["fit", "--config", str(in_tmp / "printed.yaml"), *one_batch]).model.net
    assert type(rebuilt) is LeNet and _architecture(rebuilt) == _architecture(original)
    assert repr(rebuilt) == repr(original)  # every layer's settings: kernel, stride, padding, pooling, rates
    assert rebuilt.backbone.conv1.regularizers == original.backbone.conv1.regularizers


def test_presets_take_keyword_arguments_only():
    with pytest.raises(TypeError):
        LeNet(1, 10)
    with pytest.raises(TypeError, match="filtres"):
        LeNet(filtres=[8, 16])


def test_a_subclass_of_a_preset_keeps_the_preset_defaults():
    net = WiderLeNet(widen=3, dense_units=[5])
    assert isinstance(net, LeNet) and net.widen == 3
    assert [net.backbone.conv1.layer.out_channels, net.backbone.conv2.layer.out_channels] == [12, 36]
    assert net.backbone.conv1.layer.kernel_size == (5, 5) and net.head.dense1.layer.out_features == 5

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=ConvNet)
    cfg = parser.parse_args([f"--net={__name__}.WiderLeNet", "--net.widen=1"])
    assert cfg.net.init_args.widen == 1 and cfg.net.init_args.kernel_size == 5
    assert _plain(cfg.net.init_args.dense_units) == [300]
    built = parser.instantiate(cfg).net
    assert built.backbone.conv2.layer.out_channels == 12 and built.head.dense1.layer.out_features == 300
