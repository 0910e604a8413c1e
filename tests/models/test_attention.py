"""Attention-crop model: CAM boxes, the crop actually taken, fused logits and both heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fgia.models import load_model, save_model
from fgia.models.attention import AttentionCrop
from fgia.models.output import ModelOutput
from fgia.models.registry import create_model


class _Patches(nn.Module):
    """A stride-4 'trunk' averaging 4x4 patches: the CAM follows where the image is bright."""

    out_channels = 1
    mean = std = (0.5, 0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 4)


def test_second_pass_sees_the_crop_around_the_bright_region():
    model = AttentionCrop(_Patches(), num_classes=1, threshold=0.5)
    with torch.no_grad():
        model.classifier.weight.fill_(1.0)
        model.classifier.bias.zero_()
    images = torch.zeros(1, 3, 32, 32)
    images[:, :, 8:16, 16:24] = 1.0  # bright 8x8 square -> map cells rows 2-3, cols 4-5
    out = model(images)
    boxes = model.crop_boxes(out.maps, out.head_logits["full"], (32, 32))
    assert boxes.tolist() == [[16.0, 8.0, 24.0, 16.0]]
    # the crop is the bright square (bilinear sampling blurs its border), so the second pass scores ~1 where
    # the whole image averaged 1/16
    assert out.head_logits["full"].item() == pytest.approx(1 / 16)
    assert out.head_logits["crop"].item() == pytest.approx(1.0, abs=0.1)
    assert out.logits.item() == pytest.approx((1 / 16 + out.head_logits["crop"].item()) / 2)


def test_crop_boxes_follow_the_predicted_class_and_scale_to_pixels():
    model = AttentionCrop(_Patches(), num_classes=2)
    cams = torch.zeros(1, 2, 4, 8)
    cams[0, 0, 0:2, 0:2] = 1.0  # class 0 looks top-left
    cams[0, 1, 2:4, 4:8] = 1.0  # class 1 looks bottom-right
    assert model.crop_boxes(cams, torch.tensor([[0.0, 1.0]]), (40, 80)).tolist() == [[40.0, 20.0, 80.0, 40.0]]
    assert model.crop_boxes(cams, torch.tensor([[1.0, 0.0]]), (40, 80)).tolist() == [[0.0, 0.0, 20.0, 20.0]]
    with pytest.raises(ValueError, match="crop_size"):
        AttentionCrop(_Patches(), num_classes=2, crop_size=0)


def test_registered_attention_crop_forward_backward():
    model = create_model("attention_crop", num_classes=4, backbone="resnet18", crop_size=48)
    out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, ModelOutput)
    assert set(out.head_logits) == {"full", "crop"} and out.logits.shape == (2, 4)
    assert out.embedding.shape == (2, model.embedding_dim) == (2, 1024)
    assert out.maps.shape == (2, 4, 2, 2)
    sum(h.sum() for h in out.head_logits.values()).backward()
    assert model.classifier.weight.grad is not None


def test_attention_crop_checkpoint_round_trip(tmp_path):
    model = create_model("attention_crop", num_classes=3, backbone="resnet18", threshold=0.4).eval()
    save_model(model, tmp_path, ["a", "b", "c"])
    loaded, info = load_model(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    assert loaded.threshold == 0.4 and info["embedding_dim"] == 1024
    assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)


def test_frozen_stages_are_fixed_but_never_cached(tiny_synth):
    from fgia.data import read_dataset
    from fgia.models.frozen import FrozenLowerTrunk
    from fgia.train import TrainConfig, fit

    model = create_model("attention_crop", num_classes=2, backbone="resnet18", frozen_stages=4)
    assert not isinstance(model, FrozenLowerTrunk)  # the crop pass needs the image: nothing to cache
    assert not any(p.requires_grad for p in model.lower_trunk().parameters())
    before = {k: v.clone() for k, v in model.trunk.stages[:4].state_dict().items()}
    ds = read_dataset(tiny_synth).with_classes([0, 1])
    cfg = TrainConfig(model="attention_crop", image_size=32, epochs=1, batch_size=4, workers=0, device="cpu",
                      cache_trunk=True)
    result = fit(cfg, ds, progress=False, model=model)
    after = result.model.trunk.stages[:4].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics untouched
    assert result.history[0]["loss"] > 0
    with pytest.raises(ValueError, match="frozen_stages must be in"):
        create_model("attention_crop", num_classes=2, backbone="resnet18", frozen_stages=5)


def test_first_pass_is_the_whole_image_pass_on_shared_weights():
    model = create_model("attention_crop", num_classes=3, backbone="resnet18", frozen_stages=3).eval()
    first = model.first_pass()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, alone = model(x), first(x)
    assert torch.allclose(alone.logits, out.head_logits["full"], atol=1e-5)
    assert torch.allclose(alone.maps, out.maps, atol=1e-5)
    assert list(first.lower_trunk()) == list(model.lower_trunk()) and first.frozen_stages == 3
    # training the first pass trains the crop model's own classifier
    first.train()
    first(x).logits.sum().backward()
    assert model.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="frozen_stages=0"):
        create_model("attention_crop", num_classes=3, backbone="resnet18").first_pass()
