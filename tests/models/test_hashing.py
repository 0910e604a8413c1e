"""Hashing models: one relaxed code per length, part attention, frozen lower trunk, checkpoints."""

from __future__ import annotations

import pytest
import torch

from fgia.features.binary import binarize
from fgia.models import create_model, list_models, load_model, save_model


def _model(name="a2net_hash", **kw):
    kw = {"num_classes": 5, "backbone": "test_efficientnet", "bits": [8, 12], **kw}
    if name == "a2net_hash":
        kw = {"parts": 3, "part_dim": 16, **kw}
    return create_model(name, **kw)


def test_registered():
    assert {"a2net_hash", "deep_hash", "protonet"} <= set(list_models())


@pytest.mark.parametrize("name", ["a2net_hash", "deep_hash"])
def test_one_relaxed_code_per_length(name):
    model = _model(name).eval()
    out = model(torch.randn(3, 3, 64, 64))
    assert model.embedding_dim == 20 and out.embedding.shape == (3, 20)
    assert model.code_slices == {8: slice(0, 8), 12: slice(8, 20)}
    assert out.embedding.abs().max() < 1  # tanh relaxation
    if name == "a2net_hash":
        assert set(out.head_logits) == {"8", "12"} and out.head_logits["8"].shape == (3, 5)
        torch.testing.assert_close(out.logits, (out.head_logits["8"] + out.head_logits["12"]) / 2)
        # one attention map per part, a distribution over the positions of the last feature map
        assert out.maps is None and out.attention.shape[:2] == (3, 3)
        torch.testing.assert_close(out.attention.sum((2, 3)), torch.ones(3, 3))
    else:
        assert out.logits is None and out.head_logits == {} and out.maps is None


def test_every_stage_but_the_last_is_frozen_and_forward_splits_there():
    model = _model()
    assert model.frozen_stages == len(model.trunk.stages) - 1
    assert not any(p.requires_grad for p in model.lower_trunk().parameters())
    assert all(p.requires_grad for p in model.trunk.stages[-1].parameters())
    model.train()
    assert not any(stage.training for stage in model.lower_trunk())  # pretrained BatchNorm statistics kept
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x).embedding, model.forward_top(model.lower_trunk()(x)).embedding)


def test_checkpoint_round_trip(tmp_path):
    model = _model(frozen_stages=2).eval()
    save_model(model, tmp_path, [f"c{i}" for i in range(5)])
    loaded, info = load_model(tmp_path)
    assert info["config"]["bits"] == [8, 12] and loaded.frozen_stages == 2
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x).embedding, model(x).embedding)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="distinct positive code lengths"):
        _model(bits=[8, 8])
    with pytest.raises(ValueError, match="distinct positive code lengths"):
        _model(bits=[])
    with pytest.raises(ValueError, match="parts"):
        _model(parts=0)
    with pytest.raises(ValueError, match="frozen_stages"):
        _model(frozen_stages=9)


def test_straight_through_classifies_the_binary_code_and_trains_the_relaxed_one():
    torch.manual_seed(0)
    model = _model().train()
    out = model(torch.randn(4, 3, 64, 64))
    u = out.embedding[:, model.code_slices[12]]
    binary = torch.from_numpy(binarize(u.detach().numpy()))  # the code the index stores
    torch.testing.assert_close(out.head_logits["12"], model.classifiers["12"](binary))
    out.head_logits["12"].sum().backward()
    assert model.hash_layers["12"].linear.weight.grad.abs().sum() > 0  # the gradient passes the sign


def test_without_straight_through_the_classifier_reads_the_relaxed_code():
    model = _model(straight_through=False).eval()
    out = model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out.head_logits["8"], model.classifiers["8"](out.embedding[:, :8]))
