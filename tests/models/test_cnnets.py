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
    # no fully connected layer: the scores are the global average of the class-confidence maps, which are the
    # Conv-Net's (the paper's discriminative-region maps)
    torch.testing.assert_close(out.maps.mean((2, 3)), out.head_logits["conv"])
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


@pytest.mark.parametrize("kw", [{"head_stages": 5}, {"head_layers": -1}, {"num_classes": 0}, {"drop_rate": 1.0},
                                {"head": "mlp"}, {"frozen_stages": 5}, {"head": "cosine", "head_layers": 1}])
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


def test_default_features_are_the_gap_of_each_sub_nets_last_stage():
    """The paper's f_Conv and f_Norm: no extra layers, the sub-nets' own copies of the last stage, GAP, L2."""
    model = _cnnets().eval()
    x = torch.randn(2, 3, 64, 64)
    shared = model.trunk(x)
    expected = [F.normalize(model.heads[n].stages(shared).mean((2, 3)), dim=1) for n in ("conv", "norm")]
    torch.testing.assert_close(model(x).embedding, torch.cat(expected, 1))
    assert model.conv_feature_dim == model.embedding_dim // 2 == expected[0].shape[1]


def test_cosine_head_scores_are_scaled_cosines_and_its_maps_average_to_raw_scores():
    model = _cnnets(head="cosine", cosine_scale=10.0).eval()
    out = model(torch.randn(3, 3, 64, 64))
    head = model.heads["cosine"]
    expected = 10.0 * F.normalize(out.embedding, dim=1) @ F.normalize(head.weight, dim=1).t()
    torch.testing.assert_close(out.logits, expected)
    assert out.logits.abs().max() <= 10.0 + 1e-4 and out.head_logits == {}
    raw = out.embedding @ F.normalize(head.weight, dim=1).t()  # BatchNorm in eval mode commutes with GAP
    torch.testing.assert_close(out.maps.mean((2, 3)), raw, atol=1e-4, rtol=1e-4)
    assert model.conv_feature_dim == model.embedding_dim
    restricted = model.restricted_to([2, 0]).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(restricted(x).logits, model(x).logits[:, [2, 0]])


@pytest.mark.parametrize("name", ["cnnets", "plain"])
def test_frozen_stages_stay_pretrained_and_forward_is_top_of_lower(name):
    model = create_model(name, num_classes=4, backbone="test_resnet", frozen_stages=2).train()
    lower = model.lower_trunk()
    assert len(lower) == 2 and not any(p.requires_grad for p in lower.parameters())
    assert not any(m.training for m in lower.children())  # frozen BatchNorm keeps its statistics
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model(x).embedding, model.forward_top(lower(x)).embedding)
    model.train()
    assert not any(m.training for m in model.lower_trunk().children())
    assert create_model(**model.config).frozen_stages == 2
