"""CN-Nets and the plain baseline: outputs, head split depth, joint training, rebuild from config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fgia.models import ModelOutput, create_model, list_models


def _cnnets(**kw):
    kw = {"num_classes": 5, "backbone": "test_resnet", "head_dim": 16, **kw}
    return create_model("cnnets", **kw)


def test_registered():
    assert {"cnnets", "plain"} <= set(list_models())


def test_cnnets_output_combines_both_heads():
    model = _cnnets(head_layers=2).eval()
    out = model(torch.randn(3, 3, 64, 64))
    assert isinstance(out, ModelOutput)
    assert set(out.head_logits) == {"conv", "norm"}
    assert out.embedding.shape == (3, model.embedding_dim) == (3, 32)
    assert out.maps.shape[:2] == (3, 5)
    torch.testing.assert_close(out.logits, (out.head_logits["conv"] + out.head_logits["norm"]) / 2)
    # no fully connected layer: the scores are the global average of the class-confidence maps
    torch.testing.assert_close(out.maps.mean((2, 3)), out.logits)
    assert isinstance(model.heads["norm"].norm, torch.nn.BatchNorm2d)
    assert isinstance(model.heads["conv"].norm, torch.nn.Identity)


@pytest.mark.parametrize("head_stages", [0, 2])
def test_head_stages_are_private_copies(head_stages):
    model = _cnnets(head_stages=head_stages)
    conv_stages, norm_stages = model.heads["conv"].stages, model.heads["norm"].stages
    assert len(conv_stages) == len(norm_stages) == head_stages
    assert len(model.trunk) == 5 - head_stages
    conv_params = {id(p) for p in conv_stages.parameters()}
    assert conv_params.isdisjoint(id(p) for p in norm_stages.parameters())
    assert conv_params.isdisjoint(id(p) for p in model.trunk.parameters())
    for a, b in zip(conv_stages.parameters(), norm_stages.parameters()):
        torch.testing.assert_close(a, b)  # both start from the same (e.g. pretrained) weights


def test_joint_training_reaches_trunk_and_both_heads():
    model = _cnnets(head_stages=1, drop_rate=0.2).train()
    out = model(torch.randn(4, 3, 64, 64))
    target = torch.tensor([0, 1, 2, 3])
    sum(F.cross_entropy(logits, target) for logits in out.head_logits.values()).backward()
    for part in (model.trunk, model.heads["conv"], model.heads["norm"]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_config_rebuilds_the_same_architecture():
    model = _cnnets(head_stages=1, head_layers=2, drop_rate=0.1)
    clone = create_model(**model.config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert clone.config == model.config


@pytest.mark.parametrize("kw", [{"head_stages": 5}, {"head_layers": 0}, {"num_classes": 0}, {"drop_rate": 1.0}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError):
        _cnnets(**kw)


def test_plain_baseline_maps_are_class_activation_maps():
    model = create_model("plain", num_classes=4, backbone="test_resnet").eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.embedding.shape == (2, model.embedding_dim) == (2, model.trunk.out_channels)
    torch.testing.assert_close(out.maps.mean((2, 3)), out.logits)
    assert out.head_logits == {}
    assert create_model(**model.config).config == model.config


def test_restricted_to_keeps_features_and_selects_class_maps():
    model = create_model("cnnets", num_classes=7, backbone="test_resnet", head_dim=8).eval()
    ids = [5, 1, 3]
    restricted = model.restricted_to(ids).eval()
    x = torch.randn(2, 3, 64, 64)
    full, part = model(x), restricted(x)
    assert torch.allclose(full.embedding, part.embedding)
    assert torch.allclose(full.logits[:, ids], part.logits, atol=1e-6)
    assert torch.allclose(full.head_logits["norm"][:, ids], part.head_logits["norm"], atol=1e-6)
    assert restricted.num_classes == 3 and restricted.config["num_classes"] == 3
    assert model.num_classes == 7 and model(x).logits.shape == (2, 7)  # the original is untouched
    for bad in ([], [7], [1, 1]):
        with pytest.raises(ValueError, match="class_ids"):
            model.restricted_to(bad)
