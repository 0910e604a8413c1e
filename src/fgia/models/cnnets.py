"""CN-Nets: a shared trunk, then a Conv-Net head and a Norm-Net head trained jointly.

Each head: its own copy of the trunk's last `head_stages` stages, `head_layers` (1x1 conv + BN + ReLU) layers of
width `head_dim`, then a 1x1 conv to C class-confidence maps and global average pooling (no fully connected
layer). Norm-Net puts a BatchNorm between the class conv and the pooling. A head's retrieval feature is the GAP
of its last layer before the class maps; the model's embedding concatenates both (2 x head_dim), each
L2-normalised so that both heads weigh the same in a Euclidean search.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fgia.models.backbones import create_trunk
from fgia.models.output import ModelOutput
from fgia.models.registry import register_model


class ClassMapHead(nn.Module):
    """A private copy of `stages` -> `layers` x (1x1 conv, BN, ReLU) -> dropout -> 1x1 conv to class maps
    (-> BN for Norm-Net)."""

    def __init__(
        self, stages: nn.Module, in_channels: int, dim: int, layers: int, num_classes: int, drop_rate: float, norm: bool
    ) -> None:
        super().__init__()
        self.stages = copy.deepcopy(stages)
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [
                nn.Conv2d(in_channels if i == 0 else dim, dim, 1, bias=False),
                nn.BatchNorm2d(dim),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Conv2d(dim, num_classes, 1)
        self.norm = nn.BatchNorm2d(num_classes) if norm else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(feature maps before the class conv, class-confidence maps)."""
        features = self.features(self.stages(x))
        return features, self.norm(self.classifier(self.drop(features)))


@register_model(name="cnnets")
class CNNets(nn.Module):
    """Shared trunk + Conv-Net and Norm-Net heads; logits are the mean of both heads' scores."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: str | Path | None = None,
        head_stages: int = 0,
        head_dim: int = 1024,
        head_layers: int = 1,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or head_dim < 1 or head_layers < 1 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(
                f"CN-Nets needs num_classes >= 1, head_dim >= 1, head_layers >= 1 and 0 <= drop_rate < 1; got "
                f"{num_classes=}, {head_dim=}, {head_layers=}, {drop_rate=}"
            )
        trunk = create_trunk(backbone, weights)
        shared, split = trunk.split(head_stages)
        self.trunk = shared
        sizes = (trunk.out_channels, head_dim, head_layers, num_classes, drop_rate)
        self.heads = nn.ModuleDict({name: ClassMapHead(split, *sizes, norm=name == "norm") for name in ("conv", "norm")})
        self.num_classes = num_classes
        self.embedding_dim = 2 * head_dim
        self.mean, self.std = trunk.mean, trunk.std
        self.config = {
            "name": "cnnets",
            "num_classes": num_classes,
            "backbone": backbone,
            "head_stages": head_stages,
            "head_dim": head_dim,
            "head_layers": head_layers,
            "drop_rate": drop_rate,
        }

    def forward(self, x: Tensor) -> ModelOutput:
        shared = self.trunk(x)
        features, maps, scores = [], [], {}
        for name, head in self.heads.items():
            feat, class_maps = head(shared)
            features.append(F.normalize(feat.mean((2, 3)), dim=1))
            maps.append(class_maps)
            scores[name] = class_maps.mean((2, 3))
        return ModelOutput(
            logits=torch.stack(list(scores.values())).mean(0),
            embedding=torch.cat(features, 1),
            head_logits=scores,
            maps=torch.stack(maps).mean(0),
        )


    def restricted_to(self, class_ids: Sequence[int]) -> CNNets:
        """A copy that predicts only `class_ids` (in that order): the same trunk and features, each head's class
        conv (and Norm-Net BatchNorm) keeping those output channels. A category model starts from it."""
        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        distinct = ids.unique().numel() == ids.numel()
        if ids.numel() == 0 or not distinct or int(ids.min()) < 0 or int(ids.max()) >= self.num_classes:
            raise ValueError(f"class_ids must be distinct ids in [0, {self.num_classes - 1}], got {list(class_ids)}")
        model = copy.deepcopy(self)
        for head in model.heads.values():
            for layer in (head.classifier, head.norm):
                _keep_output_channels(layer, ids)
        model.num_classes = len(ids)
        model.config = {**self.config, "num_classes": len(ids)}
        return model


def _keep_output_channels(layer: nn.Module, ids: Tensor) -> None:
    """Keep only output channels `ids` of a conv or BatchNorm layer, in place (an Identity is left as it is)."""
    for name, tensor in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]:
        if tensor.ndim:  # BatchNorm's num_batches_tracked is a scalar
            kept = tensor.detach()[ids].clone()
            setattr(layer, name, nn.Parameter(kept) if isinstance(tensor, nn.Parameter) else kept)
    if isinstance(layer, nn.Conv2d):
        layer.out_channels = len(ids)
    elif isinstance(layer, nn.BatchNorm2d):
        layer.num_features = len(ids)
