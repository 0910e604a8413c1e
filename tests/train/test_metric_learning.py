"""Metric-learning losses as trainer losses, and the P x K sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

import fgia.train.metric_learning  # noqa: F401  (registers the losses)
from fgia.models.output import ModelOutput
from fgia.train.config import TrainConfig
from fgia.train.distributed import PKSampler
from fgia.train.losses import build_loss
from fgia.train.metric_learning import model_dims
from fgia.train.trainer import TrainStep


class _TinyEmbedder(nn.Module):
    def __init__(self, classes: int = 4, dim: int = 8, with_logits: bool = True):
        super().__init__()
        self.embed = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, dim))
        self.fc = nn.Linear(dim, classes) if with_logits else None

    def forward(self, x: torch.Tensor) -> ModelOutput:
        e = self.embed(x)
        return ModelOutput(logits=self.fc(e) if self.fc is not None else None, embedding=e)


def _clusters(n_per_class: int = 8, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 3, 4, 4, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), 3, 4, 4, generator=g), labels


def _recall_at_1(emb: torch.Tensor, labels: torch.Tensor) -> float:
    d = torch.cdist(emb, emb).fill_diagonal_(float("inf"))
    return (labels[d.argmin(1)] == labels).float().mean().item()


def test_model_dims_probe():
    assert model_dims(_TinyEmbedder(classes=5, dim=7), 4) == (7, 5)
    assert model_dims(_TinyEmbedder(with_logits=False), 4) == (8, None)


@pytest.mark.parametrize(
    ("loss", "kwargs"),
    [
        ("proxy_anchor", {}),
        ("multi_similarity", {}),
        ("triplet", {"type_of_triplets": "all", "margin": 0.2}),
        ("arcface", {"ce_weight": 0.5}),
        ("normalized_softmax", {}),
    ],
)
def test_each_loss_trains_an_embedding(loss, kwargs):
    torch.manual_seed(0)
    model = _TinyEmbedder()
    cfg = TrainConfig(model="unused", loss=loss, loss_kwargs=kwargs, image_size=4)
    step = TrainStep(model, build_loss(cfg, model))
    x, y = _clusters()
    opt = torch.optim.Adam(step.parameters(), lr=0.01)  # includes the loss's proxies / class weights
    first = None
    for _ in range(40):
        value, _ = step(x, y)
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < 0.7 * first
    assert _recall_at_1(model(x).embedding.detach(), y) == 1.0


def test_proxy_losses_own_parameters_and_need_class_count():
    model = _TinyEmbedder(classes=3, dim=6)
    loss = build_loss(TrainConfig(model="unused", loss="proxy_anchor", image_size=4), model)
    proxies = [p for p in loss.parameters()]
    assert len(proxies) == 1 and proxies[0].shape == (3, 6)
    bare = _TinyEmbedder(with_logits=False)
    with pytest.raises(ValueError, match="needs num_classes"):
        build_loss(TrainConfig(model="unused", loss="arcface", image_size=4), bare)
    arc = build_loss(TrainConfig(model="unused", loss="arcface", loss_kwargs={"num_classes": 9}, image_size=4), bare)
    assert next(arc.parameters()).shape == (8, 9)


def test_metric_loss_rejects_model_without_embedding():
    loss = build_loss(TrainConfig(model="unused", loss="multi_similarity", image_size=4), _TinyEmbedder())
    with pytest.raises(ValueError, match="embedding"):
        loss(ModelOutput(logits=torch.rand(4, 2)), torch.tensor([0, 0, 1, 1]))


def test_pk_sampler_batches_have_p_classes_k_images():
    labels = np.repeat(np.arange(6), [5, 5, 5, 5, 5, 2])
    sampler = PKSampler(labels, p=3, k=4, seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == (len(labels) // 12) * 12
    for b in range(0, len(indices), 12):
        counts = Counter(labels[indices[b : b + 12]].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
    assert list(sampler) == indices  # same epoch, same draw
    sampler.set_epoch(1)
    assert list(sampler) != indices


def test_pk_sampler_ranks_take_disjoint_batches_and_bad_input():
    labels = np.repeat(np.arange(8), 6)
    whole = list(PKSampler(labels, 2, 3, seed=4, batches=4))
    r0 = list(PKSampler(labels, 2, 3, rank=0, world_size=2, seed=4, batches=4))
    r1 = list(PKSampler(labels, 2, 3, rank=1, world_size=2, seed=4, batches=4))
    assert r0 == whole[0:6] + whole[12:18] and r1 == whole[6:12] + whole[18:24]
    with pytest.raises(ValueError, match="at least 4 classes"):
        PKSampler([0, 0, 1, 1, 2], p=4, k=2)
    with pytest.raises(ValueError, match="label -1"):
        PKSampler([0, 1, -1], p=2, k=1)
