"""Episodic meta-training: episode draws, prototype logits by hand, training on cached maps only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgia.models import create_model
from fgia.train.cache import trunk_cache
from fgia.train.episodic import (
    EpisodeSampler,
    EpisodicConfig,
    meta_train,
    prototype_logits,
)
from fgia.train.trainer import normalisation


def test_episodes_draw_distinct_classes_and_images():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 2 + [3] * 6 + [-1] * 3)
    sampler = EpisodeSampler(labels, n_way=3, k_shot=2, n_query=3, seed=0)
    assert len(sampler.usable) == 3  # class 2 has only 2 images, -1 is no class
    for _ in range(20):
        support, query = sampler.sample()
        assert support.shape == (3, 2) and query.shape == (3, 3)
        rows = np.concatenate([support, query], axis=1)
        classes = labels[rows]
        assert (classes == classes[:, :1]).all() and len(set(classes[:, 0])) == 3 and 2 not in classes
        assert len(set(rows.ravel())) == rows.size
    with pytest.raises(ValueError, match="only 3 have that many"):
        EpisodeSampler(labels, n_way=4, k_shot=2, n_query=3)


def test_prototype_logits_by_hand():
    support = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[0.0, -1.0], [0.0, -4.0]]])  # 2 classes x 2 shots
    queries = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    # normalised support: class 0 -> (1,0),(0,1) -> prototype (0.5, 0.5); class 1 -> (0,-1) twice -> (0, -1)
    expected = -2.0 * torch.tensor([[0.25 + 0.25, 1 + 1], [0.25 + 2.25, 0.0]])
    torch.testing.assert_close(prototype_logits(support, queries, scale=2.0), expected)


def test_meta_training_runs_on_cached_maps_and_leaves_the_lower_trunk(tiny_ds):
    model = create_model("protonet", backbone="test_efficientnet", pooling="bilinear", reduce_dim=8)
    mean, std = normalisation(model)
    cache = trunk_cache(model.lower_trunk(), tiny_ds.samples, image_size=48, mean=mean, std=std)
    lower = {k: v.clone() for k, v in model.lower_trunk().state_dict().items()}
    last_stage = next(model.trunk.stages[-1].parameters())
    before = last_stage.detach().clone()
    calls = []
    history = meta_train(model, cache, tiny_ds.samples, EpisodicConfig(n_way=4, k_shot=2, n_query=2, episodes=6,
                                                                       warmup_episodes=1, device="cpu"),
                         on_episode=calls.append)
    assert len(history) == 6 == len(calls) and all(np.isfinite(h["loss"]) and 0 <= h["accuracy"] <= 1
                                                   for h in history)
    for name, value in model.lower_trunk().state_dict().items():
        torch.testing.assert_close(value, lower[name])  # frozen stages and their BatchNorm statistics untouched
    assert not model.training
    assert model.reduction[0].weight.grad is not None and not torch.equal(before, last_stage)  # the top trains


def test_config_checks():
    with pytest.raises(ValueError, match="warmup_episodes"):
        EpisodicConfig(episodes=5, warmup_episodes=6)
    with pytest.raises(ValueError, match="lr and scale"):
        EpisodicConfig(scale=0)
