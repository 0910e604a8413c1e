"""Embedding networks for few-shot recognition, meta-trained by episodes (`fgia.train.episodic`).

"protonet": a trunk whose first `frozen_stages` stages stay fixed (`fgia.models.frozen`; None = every stage but the
last), then a pooling of the last feature map into the embedding that prototypical networks (Snell et al., NeurIPS
2017) compare with class prototypes; no classifier (`logits` is None).

* `pooling="gap"`: global average pooling, the prototypical-network baseline.
* `pooling="bilinear"`: a 1x1 reduction to `reduce_dim` channels, then bilinear (second-order) pooling with signed
  square root and L2 (`fgia.models.encoders.BilinearPool`): the second-order few-shot head of the fine-grained
  few-shot literature the survey cites (e.g. PCM, Wei et al. TIP 2019; LRPABN, Huang et al. TMM 2020), whose
  part interactions separate species that first-order averages blur.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from fgia.models.backbones import create_trunk
from fgia.models.encoders import BilinearPool
from fgia.models.frozen import FrozenLowerTrunk, check_frozen_stages
from fgia.models.output import ModelOutput
from fgia.models.registry import register_model

POOLINGS = ("gap", "bilinear")


@register_model(name="protonet")
class ProtoNet(FrozenLowerTrunk):
    """Trunk -> GAP or reduced bilinear pooling -> embedding (see the module docstring)."""

    def __init__(self, backbone: str = "resnet50", weights: str | Path | None = None, pooling: str = "gap",
                 reduce_dim: int = 64, frozen_stages: int | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if reduce_dim < 1:
            raise ValueError(f"reduce_dim must be >= 1, got {reduce_dim}")
        self.trunk = create_trunk(backbone, weights)
        last = len(self.trunk.stages) - 1
        frozen_stages = last if frozen_stages is None else frozen_stages
        check_frozen_stages(frozen_stages, last, "protonet")
        self.frozen_stages = frozen_stages
        channels = self.trunk.out_channels
        if pooling == "bilinear":
            self.reduction: nn.Module = nn.Sequential(nn.Conv2d(channels, reduce_dim, 1, bias=False),
                                                      nn.BatchNorm2d(reduce_dim), nn.ReLU())
            self.bilinear: nn.Module | None = BilinearPool(reduce_dim)
            self.embedding_dim = reduce_dim * reduce_dim
        else:
            self.reduction, self.bilinear = nn.Identity(), None
            self.embedding_dim = channels
        self.mean, self.std = self.trunk.mean, self.trunk.std
        self.config = {"name": "protonet", "backbone": backbone, "pooling": pooling, "reduce_dim": reduce_dim,
                       "frozen_stages": frozen_stages}
        self.freeze_lower_trunk()

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk.stages[: self.frozen_stages]

    def forward_top(self, lower: Tensor) -> ModelOutput:
        fmap = self.reduction(self.trunk.stages[self.frozen_stages :](lower))
        if self.bilinear is None:
            return ModelOutput(logits=None, embedding=fmap.mean((2, 3)))
        with torch.autocast(fmap.device.type, enabled=False):  # outer products and the signed sqrt need float32
            return ModelOutput(logits=None, embedding=self.bilinear(fmap.float()))
