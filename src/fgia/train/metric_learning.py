"""Metric learning for the shared trainer: pytorch-metric-learning losses and miners on `ModelOutput.embedding`.

Registered losses (set `TrainConfig.loss`, options in `TrainConfig.loss_kwargs`):
  "proxy_anchor"      ProxyAnchorLoss (margin, alpha)
  "multi_similarity"  MultiSimilarityLoss (alpha, beta, base) with MultiSimilarityMiner (epsilon)
  "triplet"           TripletMarginLoss (margin) with a TripletMarginMiner (type_of_triplets, default semihard)
  "arcface"           ArcFaceLoss (margin in degrees, scale)
  "normalized_softmax" NormalizedSoftmaxLoss (temperature): softmax over cosines to one learned weight per class
Every one also takes `ce_weight` (default 0): add that much cross-entropy on the model's logits.
Proxy and ArcFace weights are parameters of the loss module, so the trainer optimises and checkpoints them.
Train with P x K batches (`TrainConfig.pk_images`, `fgia.train.distributed.PKSampler`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from pytorch_metric_learning import losses, miners
from torch import Tensor

from fgia.models.output import ModelOutput
from fgia.train.losses import HeadsCrossEntropy, LossFn, register_loss

if TYPE_CHECKING:
    from fgia.train.config import TrainConfig


class MetricLoss(nn.Module):
    """A PML loss (and optional miner) on the embedding, plus `ce_weight` x cross-entropy on the logits."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, ce_weight: float = 0.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
        self.loss, self.miner, self.ce_weight = loss, miner, ce_weight
        self.ce = HeadsCrossEntropy(label_smoothing) if ce_weight > 0 else None

    def forward(self, output: ModelOutput, labels: Tensor) -> Tensor:
        if output.embedding is None:
            raise ValueError("metric-learning losses need ModelOutput.embedding, but the model returned none")
        embedding = output.embedding.float()  # PML's losses are not autocast-safe
        pairs = self.miner(embedding, labels) if self.miner is not None else None
        value = self.loss(embedding, labels, pairs)
        if self.ce is not None:
            value = value + self.ce_weight * self.ce(output, labels)
        return value


@torch.no_grad()
def model_dims(model: nn.Module, image_size: int) -> tuple[int, int | None]:
    """(embedding dim, number of classes or None) of `model`, from a probe forward pass at `image_size`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: ModelOutput = model(torch.zeros(2, 3, image_size, image_size, device=device))
    model.train(was_training)
    if out.embedding is None:
        raise ValueError(f"{type(model).__name__} returns no embedding; metric learning needs one")
    return out.embedding.shape[1], (out.logits.shape[1] if out.logits is not None else None)


def _num_classes(model_classes: int | None, num_classes: int | None, loss: str) -> int:
    n = num_classes or model_classes
    if not n:
        raise ValueError(f"the {loss!r} loss needs num_classes (the model has no logits to read it from)")
    return n


def _metric_loss(cfg: TrainConfig, loss: nn.Module, miner: nn.Module | None, ce_weight: float) -> MetricLoss:
    return MetricLoss(loss, miner, ce_weight, cfg.label_smoothing)


@register_loss("proxy_anchor")
def proxy_anchor(cfg: TrainConfig, model: nn.Module, margin: float = 0.1, alpha: float = 32.0,
                 num_classes: int | None = None, ce_weight: float = 0.0) -> LossFn:
    """Proxy-Anchor loss (Kim et al. 2020): one learnable proxy per class."""
    dim, classes = model_dims(model, cfg.image_size)
    n = _num_classes(classes, num_classes, "proxy_anchor")
    return _metric_loss(cfg, losses.ProxyAnchorLoss(n, dim, margin=margin, alpha=alpha), None, ce_weight)


@register_loss("arcface")
def arcface(cfg: TrainConfig, model: nn.Module, margin: float = 28.6, scale: float = 64.0,
            num_classes: int | None = None, ce_weight: float = 0.0) -> LossFn:
    """ArcFace additive angular margin loss (margin in degrees) with its own class-weight matrix."""
    dim, classes = model_dims(model, cfg.image_size)
    n = _num_classes(classes, num_classes, "arcface")
    return _metric_loss(cfg, losses.ArcFaceLoss(n, dim, margin=margin, scale=scale), None, ce_weight)


@register_loss("normalized_softmax")
def normalized_softmax(cfg: TrainConfig, model: nn.Module, temperature: float = 0.05, num_classes: int | None = None,
                       ce_weight: float = 0.0) -> LossFn:
    """Normalised softmax (Zhai & Wu 2019): cross-entropy over cosines to class weights, divided by `temperature`."""
    dim, classes = model_dims(model, cfg.image_size)
    n = _num_classes(classes, num_classes, "normalized_softmax")
    return _metric_loss(cfg, losses.NormalizedSoftmaxLoss(n, dim, temperature=temperature), None, ce_weight)


@register_loss("multi_similarity")
def multi_similarity(cfg: TrainConfig, model: nn.Module, alpha: float = 2.0, beta: float = 50.0,
                     base: float = 0.5, epsilon: float = 0.1, ce_weight: float = 0.0) -> LossFn:
    """Multi-Similarity loss with its pair miner (Wang et al. 2019)."""
    loss = losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    return _metric_loss(cfg, loss, miners.MultiSimilarityMiner(epsilon=epsilon), ce_weight)


@register_loss("triplet")
def triplet(cfg: TrainConfig, model: nn.Module, margin: float = 0.1, type_of_triplets: str = "semihard",
            ce_weight: float = 0.0) -> LossFn:
    """Triplet margin loss on the triplets a TripletMarginMiner picks ("all", "hard", "semihard", "easy")."""
    miner = miners.TripletMarginMiner(margin=margin, type_of_triplets=type_of_triplets)
    return _metric_loss(cfg, losses.TripletMarginLoss(margin=margin), miner, ce_weight)


