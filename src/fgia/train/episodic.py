"""Episodic meta-training (prototypical networks, Snell et al., NeurIPS 2017) on cached lower-trunk maps.

An episode draws `n_way` classes, `k_shot` support and `n_query` query images of each (`EpisodeSampler`, shared
with the few-shot evaluation). The model's embeddings are L2-normalised; a class prototype is the mean of its
support embeddings; a query's logits are -`scale` x its squared Euclidean distance to each prototype, trained with
cross-entropy. That is exactly the nearest-centroid rule the evaluation applies (`fgia.eval.fewshot`), so training
optimises what is measured. The model's frozen stages never run: each image's maps come from a `TrunkCache` view
drawn at random (as in `fgia.train.fit`); only `forward_top` trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from fgia.data.samples import Sample
from fgia.runtime import pick_device, seed_everything
from fgia.train.cache import TrunkCache
from fgia.train.trainer import parameter_groups, warmup_cosine


class EpisodeSampler:
    """Draws N-way K-shot episodes from labels: per episode `n_way` distinct classes among those with at least
    `k_shot + n_query` images, and that many of each class's images without replacement. Label -1 is ignored."""

    def __init__(self, labels: Sequence[int] | np.ndarray, n_way: int, k_shot: int, n_query: int, seed: int = 0):
        y = np.asarray(labels)
        if min(n_way, k_shot, n_query) < 1 or n_way < 2:
            raise ValueError(f"need n_way >= 2 and k_shot, n_query >= 1; got {n_way}, {k_shot}, {n_query}")
        by_class = [np.flatnonzero(y == c) for c in np.unique(y[y >= 0])]
        self.usable = [idx for idx in by_class if len(idx) >= k_shot + n_query]
        if len(self.usable) < n_way:
            raise ValueError(f"{n_way}-way {k_shot}-shot with {n_query} queries needs {n_way} classes with "
                             f">= {k_shot + n_query} images each; only {len(self.usable)} have that many")
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(support indices (n_way, k_shot), query indices (n_way, n_query)); row i is the episode's class i."""
        chosen = np.stack([self.rng.permutation(self.usable[c])[: self.k_shot + self.n_query]
                           for c in self.rng.choice(len(self.usable), self.n_way, replace=False)])
        return chosen[:, : self.k_shot], chosen[:, self.k_shot :]


def prototype_logits(support: Tensor, queries: Tensor, scale: float) -> Tensor:
    """-scale x squared distance of each L2-normalised query (m, d) to each class prototype, the mean of the
    L2-normalised support embeddings (n_way, k_shot, d)."""
    prototypes = F.normalize(support, dim=-1).mean(1)
    return -scale * torch.cdist(F.normalize(queries, dim=-1), prototypes).pow(2)


@dataclass
class EpisodicConfig:
    """How to meta-train: episode shape, number of episodes, optimiser (new layers at `lr`, pretrained ones at
    `lr * backbone_lr_scale`), linear warm-up then cosine decay per episode, and the distance `scale`."""

    n_way: int = 20
    k_shot: int = 5
    n_query: int = 5
    episodes: int = 120
    optimizer: str = "adamw"
    lr: float = 5e-3
    backbone_lr_scale: float = 0.2
    weight_decay: float = 1e-4
    warmup_episodes: int = 10
    scale: float = 10.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.episodes < 1 or not 0 <= self.warmup_episodes <= self.episodes:
            raise ValueError(f"need episodes >= 1 and 0 <= warmup_episodes <= episodes, got {self.episodes}, "
                             f"{self.warmup_episodes}")
        if self.lr <= 0 or self.scale <= 0:
            raise ValueError(f"lr and scale must be > 0, got {self.lr}, {self.scale}")


def meta_train(model: nn.Module, cache: TrunkCache, samples: Sequence[Sample], cfg: EpisodicConfig,
               on_episode: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Meta-train `model` (a `FrozenLowerTrunk` model, e.g. "protonet") in place on episodes drawn from the cached
    `samples` (labels >= 0); returns the per-episode history (loss, query accuracy, seconds)."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    views = cache.dataset(samples)
    sampler = EpisodeSampler(views.labels, cfg.n_way, cfg.k_shot, cfg.n_query, cfg.seed)
    model.to(device).train()
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    param_group_fn=partial(parameter_groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                           backbone_lr_scale=cfg.backbone_lr_scale))
    scheduler = LambdaLR(optimizer, partial(warmup_cosine, warmup=cfg.warmup_episodes, total=cfg.episodes))
    targets = torch.arange(cfg.n_way, device=device).repeat_interleave(cfg.n_query)
    history = []
    for episode in range(cfg.episodes):
        start = time.perf_counter()
        support, query = sampler.sample()
        rows = np.concatenate([support.ravel(), query.ravel()])
        maps = torch.stack([views[int(i)][0] for i in rows]).to(device).contiguous(memory_format=torch.channels_last)
        embedding = model.forward_top(maps).embedding.float()
        n_support = support.size
        logits = prototype_logits(embedding[:n_support].view(cfg.n_way, cfg.k_shot, -1), embedding[n_support:],
                                  cfg.scale)
        loss = F.cross_entropy(logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} in episode {episode + 1}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        record = {"episode": episode + 1, "loss": loss.item(),
                  "accuracy": (logits.argmax(1) == targets).float().mean().item(),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if on_episode is not None:
            on_episode(record)
    model.eval()
    return history
