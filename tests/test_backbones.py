"""TorchvisionNet: Keras' include_top=False parameter count, the supported families, and every weights source
(torchvision's cache, a local file, a wrong file), plus preprocessing read from the weights' metadata."""

from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import get_model, get_model_weights

from lightning_cnn.checkpoints import CheckpointError
from lightning_cnn.models import TorchvisionNet
from lightning_cnn.models.backbones import (
    WeightsMismatchError,
    WeightsUnavailableError,
    load_backbone_weights,
    weights_preprocessing,
)
from lightning_cnn.summary import keras_summary

# Keras 3: VGG16(include_top=False).count_params() (see the Keras parity notes).
KERAS_VGG16_NO_TOP = 14_714_688


def test_vgg16_backbone_has_keras_parameter_count_and_the_slides_head():
    net = TorchvisionNet(in_channels=3, num_classes=10, input_size=(32, 32), arch="vgg16")
    assert sum(p.numel() for p in net.backbone.parameters()) == KERAS_VGG16_NO_TOP
    # The slides' head: Flatten -> Dense 1024 relu -> Dropout 0.5 -> Dense 10 (VGG16 leaves 512x1x1 at 32x32).
    summary = keras_summary(net.head, (512, 1, 1))
    assert [(r.type_name, r.output_shape, r.params) for r in summary.rows] == [
        ("Flatten", (None, 512), 0),
        ("Dense", (None, 1024), 512 * 1024 + 1024),
        ("Dropout", (None, 1024), 0),
        ("Dense", (None, 10), 1024 * 10 + 10),
    ]
    assert net.head.dense_drop1.p == 0.5


@pytest.mark.parametrize(
    "arch",
    ["vgg19", "resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"],
)
def test_families_forward_backward(arch):
    torch.manual_seed(0)
    net = TorchvisionNet(in_channels=3, num_classes=7, input_size=(32, 32), arch=arch, dense_units=[32])
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in net.head.parameters())
    assert all(p.grad is not None for p in net.backbone.parameters())
    expected_pool = "flatten" if arch.startswith("vgg") else "avg"
    assert ("global_pool" in dict(net.head.named_children())) == (expected_pool == "avg")


def test_grayscale_input_is_repeated_to_three_channels():
    torch.manual_seed(0)
    net = TorchvisionNet(in_channels=1, num_classes=2, input_size=(32, 32), arch="resnet18", dense_units=[]).eval()
    x = torch.rand(2, 1, 32, 32)
    assert net.num_outputs == 1
    assert torch.equal(net(x), net(x.expand(-1, 3, -1, -1)))


def _fake_pretrained(arch: str, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return get_model(arch, weights=None).state_dict()


def test_named_weights_are_read_from_the_torch_hub_cache(tmp_path, monkeypatch):
    arch = "mobilenet_v3_small"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    member = get_model_weights(arch)["IMAGENET1K_V1"]
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = _fake_pretrained(arch)
    torch.save(state, checkpoints / os.path.basename(member.url))  # the name torchvision looks for

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download although the file is in the cache")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = TorchvisionNet(3, 5, (32, 32), arch=arch, weights="IMAGENET1K_V1")
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key
    # The full enum name and DEFAULT resolve through the same path.
    full = TorchvisionNet(3, 5, (32, 32), arch=arch, weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    assert torch.equal(full.backbone[0][0].weight, net.backbone[0][0].weight)


def test_named_weights_offline_and_not_cached_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsUnavailableError, match=re.escape(str(expected))):
        TorchvisionNet(3, 4, (32, 32), arch="resnet18", weights="IMAGENET1K_V1")


def test_local_weights_file(tmp_path):
    state = _fake_pretrained("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = TorchvisionNet(3, 4, (32, 32), arch="resnet18", weights=str(path))
    assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_weights_of_another_architecture_name_the_mismatched_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_fake_pretrained("resnet18"), path)
    with pytest.raises(
        WeightsMismatchError, match=r"missing keys: features\.0\.0\.weight.*unexpected keys: conv1\.weight"
    ):
        TorchvisionNet(3, 4, (32, 32), arch="mobilenet_v3_small", weights=str(path))


def test_weights_file_is_loaded_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "note": Path("x")}, path)  # an arbitrary object inside
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        TorchvisionNet(3, 4, (32, 32), arch="resnet18", weights=str(path))


def test_bad_settings_fail_with_the_value():
    with pytest.raises(ValueError, match="arch='vit_b_16' is not supported"):
        TorchvisionNet(arch="vit_b_16")
    with pytest.raises(ValueError, match="weights='IMAGENET9K' is not a torchvision weights name of resnet18"):
        TorchvisionNet(arch="resnet18", input_size=(32, 32), weights="IMAGENET9K")
    with pytest.raises(ValueError, match="in_channels=4"):
        TorchvisionNet(in_channels=4, arch="resnet18")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TorchvisionNet(arch="resnet18", input_size=(32, 32), weights="./missing.pth")


def test_preprocessing_comes_from_the_weights_metadata():
    mean, std, size = weights_preprocessing("VGG16_Weights.IMAGENET1K_V1")
    preset = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
    assert (list(mean), list(std), size) == (list(preset.mean), list(preset.std), (224, 224))
    assert mean == pytest.approx((0.485, 0.456, 0.406))  # the values the parity notes list for these weights
    with pytest.raises(ValueError, match="VGG16_Weights.IMAGENET1K_V1"):
        weights_preprocessing("IMAGENET1K_V1")


def test_load_backbone_weights_reads_checkpoints_and_state_dicts(tmp_path):
    net = TorchvisionNet(3, 4, (32, 32), arch="mobilenet_v3_small")
    donor = TorchvisionNet(3, 9, (32, 32), arch="mobilenet_v3_small")  # other head: ignored
    for name, payload in {
        "ckpt.ckpt": {"state_dict": {f"net.{k}": v for k, v in donor.state_dict().items()}, "epoch": 3},
        "net.pt": donor.state_dict(),
        "backbone.pt": donor.backbone.state_dict(),
    }.items():
        torch.save(payload, tmp_path / name)
        load_backbone_weights(net.backbone, tmp_path / name)
        assert torch.equal(net.backbone[0][0].weight, donor.backbone[0][0].weight), name
