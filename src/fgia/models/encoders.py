"""End-to-end orderless encoders for recognition: Bilinear CNN and compact bilinear pooling.

Both are trunk -> (optional 1x1 reduction) -> pooling -> signed square root -> L2 -> linear classifier,
registered as "bilinear" and "compact_bilinear" (method "tensor_sketch" or "random_maclaurin", `dim`).
`frozen_stages` fixes the trunk's first stages (`fgia.models.frozen`), so both train on their cached output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fgia.models.backbones import Trunk, create_trunk
from fgia.models.frozen import FrozenLowerTrunk, check_frozen_stages
from fgia.models.output import ModelOutput
from fgia.models.registry import register_model

COMPACT_METHODS = ("tensor_sketch", "random_maclaurin")


def signed_sqrt_l2(x: Tensor) -> Tensor:
    """sign(x) * sqrt(|x|), then L2 over the last dimension (the B-CNN normalisation)."""
    return F.normalize(torch.sign(x) * torch.sqrt(x.abs() + 1e-12), dim=-1)


def _locations(x: Tensor) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"bilinear pooling takes a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
    return x.flatten(2).transpose(1, 2)  # (B, HW, C)


class BilinearPool(nn.Module):
    """Outer-product pooling: mean over locations of x x^T, flattened to C*C (normalised when `normalize`)."""

    def __init__(self, in_channels: int, normalize: bool = True):
        super().__init__()
        self.in_channels, self.normalize, self.out_dim = in_channels, normalize, in_channels * in_channels

    def forward(self, x: Tensor) -> Tensor:
        local = _locations(x)
        pooled = (local.transpose(1, 2) @ local).flatten(1) / local.shape[1]
        return signed_sqrt_l2(pooled) if self.normalize else pooled


class CompactBilinearPool(nn.Module):
    """Compact bilinear pooling (Gao et al. 2016): a `dim`-d random feature whose inner products
    approximate the bilinear kernel <x, y>^2 per location pair, averaged over locations.

    tensor_sketch:    FFT-convolution of two count sketches of x.
    random_maclaurin: (W1 x) * (W2 x) / sqrt(dim) with random +-1 matrices W1, W2.
    The random projections are fixed buffers drawn from `seed`, so they are saved with the model.
    """

    def __init__(self, in_channels: int, dim: int = 8192, method: str = "tensor_sketch",
                 normalize: bool = True, seed: int = 0):
        super().__init__()
        if method not in COMPACT_METHODS:
            raise ValueError(f"unknown compact bilinear method {method!r}; choose from {', '.join(COMPACT_METHODS)}")
        if dim < 1 or in_channels < 1:
            raise ValueError(f"compact bilinear needs dim >= 1 and in_channels >= 1, got {dim}, {in_channels}")
        self.in_channels, self.out_dim, self.method, self.normalize = in_channels, dim, method, normalize
        gen = torch.Generator().manual_seed(seed)

        def signs(*shape: int) -> Tensor:
            return torch.randint(0, 2, shape, generator=gen).float() * 2 - 1

        if method == "tensor_sketch":
            for i in (1, 2):
                sketch = torch.zeros(in_channels, dim)
                sketch[torch.arange(in_channels), torch.randint(0, dim, (in_channels,), generator=gen)] = signs(
                    in_channels
                )
                self.register_buffer(f"proj{i}", sketch)
        else:
            self.register_buffer("proj1", signs(in_channels, dim))
            self.register_buffer("proj2", signs(in_channels, dim))

    def features(self, x: Tensor) -> Tensor:
        """The unnormalised pooled compact feature (B, dim)."""
        local = _locations(x)
        a, b = local @ self.proj1.to(local), local @ self.proj2.to(local)
        if self.method == "tensor_sketch":
            phi = torch.fft.irfft(torch.fft.rfft(a, dim=-1) * torch.fft.rfft(b, dim=-1), n=self.out_dim, dim=-1)
        else:
            phi = a * b / self.out_dim**0.5
        return phi.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x)
        return signed_sqrt_l2(pooled) if self.normalize else pooled


class PooledClassifier(FrozenLowerTrunk):
    """trunk -> optional 1x1 reduction -> `pool` (B, D) -> dropout -> linear; embedding is the pooled feature.

    `config` is what `create_model(**config)` needs to rebuild it (checkpoints store it); the trunk's first
    `frozen_stages` stages stay fixed (`fgia.models.frozen`).
    """

    def __init__(self, trunk: Trunk, pool: nn.Module, num_classes: int, config: dict[str, Any],
                 reduction: nn.Module | None = None, dropout: float = 0.0, frozen_stages: int = 0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        check_frozen_stages(frozen_stages, len(trunk.stages) - 1, config["name"])
        self.trunk, self.reduction, self.pool = trunk, reduction or nn.Identity(), pool
        self.frozen_stages = frozen_stages
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pool.out_dim, num_classes)
        self.num_classes, self.embedding_dim = num_classes, pool.out_dim
        self.config = config
        self.mean, self.std = trunk.mean, trunk.std
        self.freeze_lower_trunk()

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk.stages[: self.frozen_stages]

    def forward_top(self, lower: Tensor) -> ModelOutput:
        fmap = self.reduction(self.trunk.stages[self.frozen_stages :](lower))
        # outer products, FFTs and the signed sqrt need float32 (torch.fft has no bfloat16 kernels)
        with torch.autocast(fmap.device.type, enabled=False):
            embedding = self.pool(fmap.float())
        return ModelOutput(logits=self.classifier(self.dropout(embedding)), embedding=embedding)


def _reduced(trunk: nn.Module, reduce_dim: int | None) -> tuple[nn.Module | None, int]:
    """A 1x1 conv + BN + ReLU to `reduce_dim` channels (keeps C*C tractable), or none."""
    channels = trunk.out_channels
    if reduce_dim is None:
        return None, channels
    layer = nn.Sequential(nn.Conv2d(channels, reduce_dim, 1, bias=False), nn.BatchNorm2d(reduce_dim), nn.ReLU())
    return layer, reduce_dim


@register_model(name="bilinear")
def bilinear(num_classes: int, backbone: str = "resnet18", weights: str | None = None,
             reduce_dim: int | None = None, dropout: float = 0.0, frozen_stages: int = 0) -> PooledClassifier:
    """Bilinear CNN (Lin et al.): symmetric outer-product pooling of one trunk's last conv map."""
    config = {"name": "bilinear", "num_classes": num_classes, "backbone": backbone, "reduce_dim": reduce_dim,
              "dropout": dropout, "frozen_stages": frozen_stages}
    trunk = create_trunk(backbone, weights)
    reduction, channels = _reduced(trunk, reduce_dim)
    return PooledClassifier(trunk, BilinearPool(channels), num_classes, config, reduction, dropout, frozen_stages)


@register_model(name="compact_bilinear")
def compact_bilinear(num_classes: int, backbone: str = "resnet18", weights: str | None = None,
                     method: str = "tensor_sketch", dim: int = 8192, reduce_dim: int | None = None,
                     dropout: float = 0.0, seed: int = 0, frozen_stages: int = 0) -> PooledClassifier:
    """Compact bilinear pooling (tensor sketch or random Maclaurin) of one trunk's last conv map."""
    config = {"name": "compact_bilinear", "num_classes": num_classes, "backbone": backbone, "method": method,
              "dim": dim, "reduce_dim": reduce_dim, "dropout": dropout, "seed": seed,
              "frozen_stages": frozen_stages}
    trunk = create_trunk(backbone, weights)
    reduction, channels = _reduced(trunk, reduce_dim)
    pool = CompactBilinearPool(channels, dim=dim, method=method, seed=seed)
    return PooledClassifier(trunk, pool, num_classes, config, reduction, dropout, frozen_stages)
