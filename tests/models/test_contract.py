"""The contract every registered model keeps (timm-style: one test, parametrised over the whole registry).

forward -> ModelOutput with an embedding of `embedding_dim` (and logits / class maps when it has them); a loss
reaches its trainable parameters; `create_model(**model.config)` rebuilds it; save/load gives the same outputs
and restores its extraction spec;
a model with frozen stages computes forward = forward_top(lower_trunk(x)).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fgia.models import (
    ModelOutput,
    create_model,
    list_models,
    load_model,
    model_spec,
    save_model,
)
from fgia.models.frozen import FrozenLowerTrunk

NUM_CLASSES = 4
SMALL = {"bilinear": {"reduce_dim": 16}, "compact_bilinear": {"dim": 256}}  # keep the encoders quick
# Models without a classifier (no num_classes): the episodic few-shot embedding, meta-trained on prototypes.
CLASS_FREE = {"protonet"}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    classes = {} if name in CLASS_FREE else {"num_classes": NUM_CLASSES}
    return create_model(name, backbone="test_resnet", **classes, **SMALL.get(name, {}))


@pytest.fixture(params=list_models())
def name(request) -> str:
    return request.param


def test_every_model_is_checked():
    assert {"cnnets", "plain", "bilinear", "compact_bilinear", "attention_crop", "a2net_hash", "deep_hash",
            "protonet"} <= set(list_models())


def test_forward_gives_a_model_output_of_the_declared_sizes(name):
    model = _build(name).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, ModelOutput)
    assert out.embedding.shape == (2, model.embedding_dim) and torch.isfinite(out.embedding).all()
    if out.logits is not None:
        assert out.logits.shape == (2, NUM_CLASSES)
    for logits in out.head_logits.values():
        assert logits.shape == (2, NUM_CLASSES)
    if out.maps is not None:
        assert out.maps.shape[:2] == (2, NUM_CLASSES) and out.maps.ndim == 4
    assert len(model.mean) == len(model.std) == 3


def test_a_loss_reaches_the_trainable_parameters(name):
    model = _build(name).train()
    out = model(torch.randn(4, 3, 64, 64))
    target = torch.arange(4) % NUM_CLASSES
    loss = F.cross_entropy(out.logits, target) if out.logits is not None else out.embedding.pow(2).mean()
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable) > len(trainable) // 2


def test_config_rebuilds_and_checkpoints_round_trip(name, tmp_path):
    model = _build(name).eval()
    clone = create_model(**model.config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    spec = model_spec(model, image_size=64)
    save_model(model, tmp_path, [f"c{i}" for i in range(NUM_CLASSES)], spec=spec)
    loaded, info = load_model(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x).embedding, model(x).embedding)
    assert info["config"] == model.config and info["embedding_dim"] == model.embedding_dim
    assert loaded.spec == spec and spec.mean == tuple(model.mean)  # read as it was trained


def test_frozen_stages_split_the_forward_pass(name):
    model = _build(name)
    if not isinstance(model, FrozenLowerTrunk):
        pytest.skip(f"{name} has no frozen-stage split (it trains end to end only)")
    model = create_model(**{**model.config, "frozen_stages": 2}).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model.forward_top(model.lower_trunk()(x)).embedding, model(x).embedding)
    assert not any(p.requires_grad for p in model.lower_trunk().parameters())
