"""Pluggable training losses: `register_loss(name)` factories turning a model's `ModelOutput` into a scalar.

Other model kinds (metric-learning embedders, encoders) register their loss here and train with `fit` by
setting `TrainConfig.loss`. A factory may return an `nn.Module` with parameters (e.g. a margin-softmax
classifier): the trainer optimises, synchronises (DDP) and checkpoints them with the model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fgia.models.output import ModelOutput
from fgia.registry import Registry

if TYPE_CHECKING:
    from fgia.train.config import TrainConfig

LossFn = Callable[[ModelOutput, Tensor], Tensor]
LossFactory = Callable[..., LossFn]  # (cfg: TrainConfig, model: nn.Module, **cfg.loss_kwargs)

LOSSES: Registry[LossFactory] = Registry("loss")
# Modules registering more losses, imported on first need: they carry optional dependencies.
_PLUGINS = ("fgia.train.hashing", "fgia.train.metric_learning")


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Register `factory(cfg, model, **cfg.loss_kwargs) -> loss_fn(output, labels)` under `name`."""
    return LOSSES.register(name)


def build_loss(cfg: TrainConfig, model: nn.Module) -> LossFn:
    """The loss named by `cfg.loss`, built for `model`."""
    if cfg.loss not in LOSSES:
        for module in _PLUGINS:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise KeyError(f"loss {cfg.loss!r} is not registered and {module} cannot be imported ({err}); "
                               "pip install 'fgia[metric]' for the metric-learning losses") from err
    return LOSSES.get(cfg.loss)(cfg, model, **cfg.loss_kwargs)


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return LOSSES.names()


class HeadsCrossEntropy(nn.Module):
    """Cross-entropy summed over every head's logits (CN-Nets: Conv-Net + Norm-Net), or on `logits` alone."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, output: ModelOutput, labels: Tensor) -> Tensor:
        heads = list(output.head_logits.values()) or [output.logits]
        if heads[0] is None:
            raise ValueError("the 'ce' loss needs logits, but the model returned none (an embedding model?)")
        return sum(F.cross_entropy(h.float(), labels, label_smoothing=self.label_smoothing) for h in heads)


@register_loss("ce")
def _cross_entropy(cfg: TrainConfig, model: nn.Module) -> LossFn:
    return HeadsCrossEntropy(label_smoothing=cfg.label_smoothing)
