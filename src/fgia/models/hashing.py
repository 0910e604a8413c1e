"""Learned binary codes for fine-grained hashing: hash layers on a CNN trunk's last feature map.

A hashing model gives every image one relaxed code per code length in `bits`: tanh(BN(linear(feature))), values in
(-1, 1), whose sign is the binary code (`fgia.features.binary.binarize`). Its `embedding` concatenates
the relaxed codes of every length in `bits` order (`code_slices[b]` is where length b lies), so one extraction
pass yields every length. Learning several lengths at once, one hash layer each on a shared feature, is a CPU
economy; the published methods train one network per length. The pooled feature is batch-normalised first: pooled
activations share a large positive component that would otherwise push every image's code to the same corner.

"a2net_hash": attribute-aware hashing in the spirit of A2-Net (Wei et al., NeurIPS 2021) and ExchNet (Cui et al.,
ECCV 2020). `parts` attention maps (a 1x1 conv, softmax over positions) pool the last feature map into part
features; the global average and the part features (each projected to `part_dim` by one shared layer) form the
attribute-aware feature every hash layer reads. Each code feeds a cosine classifier (`head_logits[str(b)]`;
`logits` is their mean) and `attention` holds the part-attention maps (the loss keeps the parts apart). With
`straight_through` (the default) the classifiers see the binary code sign(u) and their gradient reaches u as if
through the identity (Greedy Hash, Su et al., NeurIPS 2018): the codes are trained as they are searched. Without
it, the classifiers read the relaxed u, which the BatchNorm before tanh keeps far from +-1 (mean |u| ~0.55), and
binarising lost a third of the mAP (`fgia bench hashing`, 48 bits on the Cars classification split: the relaxed
code 0.447, its sign 0.296; with straight-through, the sign 0.383).

"deep_hash": the supervised deep-hashing baseline, GAP -> hash layers and nothing else (no classifier; trained
with the DPSH pairwise likelihood of `fgia.train.hashing`).

Both keep the trunk's first `frozen_stages` stages fixed (`fgia.models.frozen`; None = every stage but the last),
so training runs on the cached lower-trunk maps like every other fgia model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fgia.models.backbones import create_trunk
from fgia.models.frozen import FrozenLowerTrunk, check_frozen_stages
from fgia.models.output import ModelOutput
from fgia.models.registry import register_model

DEFAULT_BITS = (12, 24, 32, 48)


class PartAttentionPool(nn.Module):
    """(B, C, h, w) -> [GAP (C), `parts` x attention-pooled part feature projected to `part_dim`] and the
    attention maps (B, parts, h, w), each summing to 1 over positions."""

    def __init__(self, channels: int, parts: int, part_dim: int) -> None:
        super().__init__()
        self.attention = nn.Conv2d(channels, parts, 1)
        self.project = nn.Sequential(nn.Linear(channels, part_dim), nn.LayerNorm(part_dim))
        self.out_dim = channels + parts * part_dim

    def forward(self, fmap: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.attention(fmap)
        weights = logits.flatten(2).softmax(-1)  # (B, parts, hw)
        parts = weights @ fmap.flatten(2).transpose(1, 2)  # (B, parts, C)
        feature = torch.cat([fmap.mean((2, 3)), self.project(parts).flatten(1)], 1)
        return feature, weights.view_as(logits)


class GlobalPool(nn.Module):
    """(B, C, h, w) -> GAP (B, C); no maps."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_dim = channels

    def forward(self, fmap: Tensor) -> tuple[Tensor, None]:
        return fmap.mean((2, 3)), None


class HashLayer(nn.Module):
    """feature -> linear -> BatchNorm -> tanh: a relaxed `bits`-bit code.

    The BatchNorm keeps the pre-activations at unit scale: without it AdamW grew them past tanh's linear range
    within an epoch (mean |u| 0.93), the gradients vanished and the codes stopped learning (48-bit mAP 0.093 vs
    0.186 with it, 40 car models)."""

    def __init__(self, in_dim: int, bits: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, bits)
        self.norm = nn.BatchNorm1d(bits)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.norm(self.linear(x)))


class CosineClassifier(nn.Module):
    """`scale` x the cosine between a code and one learned weight per class."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class HashingNet(FrozenLowerTrunk):
    """Trunk -> pooling (`PartAttentionPool` or `GlobalPool`) -> BatchNorm -> dropout -> one `HashLayer` per length
    (-> a `CosineClassifier` per length when `classify`). See the module docstring."""

    def __init__(self, num_classes: int, backbone: str, weights: str | Path | None, bits: Sequence[int],
                 frozen_stages: int | None, pooling: str, parts: int, part_dim: int, classify: bool,
                 drop_rate: float, cosine_scale: float, straight_through: bool, config: dict) -> None:
        super().__init__()
        bits = [int(b) for b in bits]
        if not bits or min(bits) < 1 or len(set(bits)) != len(bits):
            raise ValueError(f"bits must be distinct positive code lengths, got {bits}")
        if num_classes < 1 or not 0.0 <= drop_rate < 1.0 or parts < 1 or part_dim < 1:
            raise ValueError(f"hashing models need num_classes, parts, part_dim >= 1 and 0 <= drop_rate < 1; got "
                             f"{num_classes=}, {parts=}, {part_dim=}, {drop_rate=}")
        self.trunk = create_trunk(backbone, weights)
        last = len(self.trunk.stages) - 1
        frozen_stages = last if frozen_stages is None else frozen_stages
        check_frozen_stages(frozen_stages, last, config["name"])
        self.frozen_stages = frozen_stages
        channels = self.trunk.out_channels
        self.pool = PartAttentionPool(channels, parts, part_dim) if pooling == "parts" else GlobalPool(channels)
        self.norm = nn.BatchNorm1d(self.pool.out_dim)
        self.drop = nn.Dropout(drop_rate)
        self.hash_layers = nn.ModuleDict({str(b): HashLayer(self.pool.out_dim, b) for b in bits})
        self.classifiers = nn.ModuleDict(
            {str(b): CosineClassifier(b, num_classes, cosine_scale) for b in bits} if classify else {})
        self.bits = bits
        self.straight_through = straight_through
        offsets = [0, *itertools.accumulate(bits)]
        self.code_slices = {b: slice(offsets[i], offsets[i + 1]) for i, b in enumerate(bits)}
        self.num_classes = num_classes
        self.embedding_dim = offsets[-1]
        self.mean, self.std = self.trunk.mean, self.trunk.std
        self.config = {**config, "num_classes": num_classes, "backbone": backbone, "bits": bits,
                       "frozen_stages": frozen_stages, "drop_rate": drop_rate}
        self.freeze_lower_trunk()

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk.stages[: self.frozen_stages]

    def forward_top(self, lower: Tensor) -> ModelOutput:
        fmap = self.trunk.stages[self.frozen_stages :](lower)
        feature, attention = self.pool(fmap.float())
        feature = self.drop(self.norm(feature))
        codes = {name: layer(feature) for name, layer in self.hash_layers.items()}
        classified = {name: _sign_straight_through(u) for name, u in codes.items()} if self.straight_through else codes
        scores = {name: classifier(classified[name]) for name, classifier in self.classifiers.items()}
        return ModelOutput(
            logits=torch.stack(list(scores.values())).mean(0) if scores else None,
            embedding=torch.cat(list(codes.values()), 1),
            head_logits=scores,
            attention=attention,
        )


def _sign_straight_through(u: Tensor) -> Tensor:
    """The binary code in the forward pass (+1 where u > 0, else -1: `fgia.features.binary.binarize`, what the index
    stores), the identity's gradient in the backward one (Greedy Hash)."""
    return u + (torch.where(u > 0, 1.0, -1.0).to(u.dtype) - u).detach()


@register_model(name="a2net_hash")
def a2net_hash(num_classes: int, backbone: str = "resnet50", weights: str | Path | None = None,
               bits: Sequence[int] = DEFAULT_BITS, parts: int = 4, part_dim: int = 256,
               frozen_stages: int | None = None, drop_rate: float = 0.0, cosine_scale: float = 16.0,
               straight_through: bool = True) -> HashingNet:
    """Attribute-aware hashing (part attention + hash layers + cosine classifiers on the codes)."""
    config = {"name": "a2net_hash", "parts": parts, "part_dim": part_dim, "cosine_scale": cosine_scale,
              "straight_through": straight_through}
    return HashingNet(num_classes, backbone, weights, bits, frozen_stages, "parts", parts, part_dim, True, drop_rate,
                      cosine_scale, straight_through, config)


@register_model(name="deep_hash")
def deep_hash(num_classes: int, backbone: str = "resnet50", weights: str | Path | None = None,
              bits: Sequence[int] = DEFAULT_BITS, frozen_stages: int | None = None,
              drop_rate: float = 0.0) -> HashingNet:
    """The supervised deep-hashing baseline: GAP -> hash layers (DPSH-style pairwise training)."""
    return HashingNet(num_classes, backbone, weights, bits, frozen_stages, "global", 1, 1, False, drop_rate, 1.0,
                      False, {"name": "deep_hash"})
