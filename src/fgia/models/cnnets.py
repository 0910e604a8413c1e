"""CN-Nets: a shared trunk, then sub-nets trained jointly, each owning its copy of the trunk's last stages.

`head="cnnets"` (the paper): a Conv-Net and a Norm-Net. Each sub-net is its own copy of the trunk's last
`head_stages` stages, optionally `head_layers` (1x1 conv + BN + ReLU) layers of width `head_dim`, then a 1x1 conv to
C class-confidence maps and global average pooling (no fully connected layer); Norm-Net puts a BatchNorm between
the class conv and the pooling. A sub-net's retrieval feature (f_Conv, f_Norm) is the GAP of its last layer before
the class maps: with the default `head_layers=0`, its last stage's output, as in the paper. The embedding f_CN
concatenates both, each L2-normalised so that both weigh the same in a Euclidean search.

`head="cosine"`: one sub-net whose embedding is BatchNorm(GAP(last stage)) and whose logits are `cosine_scale` x
the cosine to one learned weight per class (a normalised softmax); its class maps are that classifier applied at
every position. On the real composite it learns a better retrieval embedding than the two class-map heads.

The class-confidence maps (`ModelOutput.maps`) are the Conv-Net's (the cosine sub-net's for `head="cosine"`);
the first `conv_feature_dim` dimensions of the embedding are the Conv-Net feature f_Conv, the coarse feature of
the retrieval system. `frozen_stages` fixes the first stages of the shared trunk (`fgia.models.frozen`), so
training can run on their cached output.
"""

from __future__ import annotations

import copy
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

HEADS = ("cnnets", "cosine")


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
        self.classifier = nn.Conv2d(dim if layers else in_channels, num_classes, 1)
        self.norm = nn.BatchNorm2d(num_classes) if norm else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(embedding, class scores, class-confidence maps)."""
        features = self.features(self.stages(x))
        maps = self.norm(self.classifier(self.drop(features)))
        return F.normalize(features.mean((2, 3)), dim=1), maps.mean((2, 3)), maps

    def keep_classes(self, ids: Tensor) -> None:
        for layer in (self.classifier, self.norm):
            _keep_output_channels(layer, ids)


class CosineHead(nn.Module):
    """A private copy of `stages` -> GAP -> BatchNorm (the embedding) -> scale x cosine to per-class weights."""

    def __init__(self, stages: nn.Module, in_channels: int, num_classes: int, drop_rate: float, scale: float) -> None:
        super().__init__()
        self.stages = copy.deepcopy(stages)
        self.bn = nn.BatchNorm1d(in_channels)
        self.drop = nn.Dropout(drop_rate)
        self.weight = nn.Parameter(torch.randn(num_classes, in_channels) / math.sqrt(in_channels))
        self.scale = scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        fmap = self.stages(x)
        embedding = self.bn(fmap.mean((2, 3)))
        weight = F.normalize(self.weight, dim=1)
        logits = self.scale * F.normalize(self.drop(embedding), dim=1) @ weight.t()
        # The eval-mode BatchNorm is one affine map per channel, so it commutes with GAP: these maps average to
        # the (unnormalised) class scores, class evidence per position like a class activation map.
        bn = self.bn
        normalised = F.batch_norm(fmap, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        maps = F.conv2d(normalised, weight[:, :, None, None])
        return embedding, logits, maps

    def keep_classes(self, ids: Tensor) -> None:
        self.weight = nn.Parameter(self.weight.detach()[ids].clone())


@register_model(name="cnnets")
class CNNets(FrozenLowerTrunk):
    """Shared trunk + sub-nets (Conv-Net and Norm-Net, or one cosine head); logits are the mean of the sub-nets'."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: str | Path | None = None,
        head: str = "cnnets",
        head_stages: int = 1,
        head_dim: int = 512,
        head_layers: int = 0,
        drop_rate: float = 0.0,
        frozen_stages: int | None = 0,
        cosine_scale: float = 16.0,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if num_classes < 1 or head_dim < 1 or head_layers < 0 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(
                f"CN-Nets needs num_classes >= 1, head_dim >= 1, head_layers >= 0 and 0 <= drop_rate < 1; got "
                f"{num_classes=}, {head_dim=}, {head_layers=}, {drop_rate=}"
            )
        if head == "cosine" and head_layers:
            raise ValueError("the cosine head has no extra layers (head_layers must be 0)")
        trunk = create_trunk(backbone, weights)
        shared, split = trunk.split(head_stages)
        if frozen_stages is None:  # every shared stage: only the sub-nets train
            frozen_stages = len(shared)
        check_frozen_stages(frozen_stages, len(shared), "cnnets")
        self.trunk = shared
        self.frozen_stages = frozen_stages
        width = trunk.out_channels
        if head == "cosine":
            self.heads = nn.ModuleDict({"cosine": CosineHead(split, width, num_classes, drop_rate, cosine_scale)})
            self.conv_feature_dim = width
        else:
            sizes = (width, head_dim, head_layers, num_classes, drop_rate)
            self.heads = nn.ModuleDict({n: ClassMapHead(split, *sizes, norm=n == "norm") for n in ("conv", "norm")})
            self.conv_feature_dim = head_dim if head_layers else width
        self.num_classes = num_classes
        self.embedding_dim = self.conv_feature_dim * len(self.heads)
        self.mean, self.std = trunk.mean, trunk.std
        self.config = {
            "name": "cnnets",
            "num_classes": num_classes,
            "backbone": backbone,
            "head": head,
            "head_stages": head_stages,
            "head_dim": head_dim,
            "head_layers": head_layers,
            "drop_rate": drop_rate,
            "frozen_stages": frozen_stages,
            "cosine_scale": cosine_scale,
        }
        self.freeze_lower_trunk()

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk[: self.frozen_stages]

    def head_outputs(self, lower: Tensor) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Each sub-net's (embedding, class scores, class-confidence maps) from the lower trunk's output, e.g. the
        Norm-Net's maps, which `ModelOutput.maps` (the Conv-Net's) leaves out."""
        shared = self.trunk[self.frozen_stages :](lower)
        return {name: head(shared) for name, head in self.heads.items()}

    def forward_top(self, lower: Tensor) -> ModelOutput:
        outputs = self.head_outputs(lower)
        embeddings = [embedding for embedding, _, _ in outputs.values()]
        scores = {name: score for name, (_, score, _) in outputs.items()}
        maps = {name: head_maps for name, (_, _, head_maps) in outputs.items()}
        return ModelOutput(
            logits=torch.stack(list(scores.values())).mean(0),
            embedding=torch.cat(embeddings, 1),
            head_logits=scores if len(scores) > 1 else {},
            maps=maps.get("conv", maps.get("cosine")),
        )

    def restricted_to(self, class_ids: Sequence[int]) -> CNNets:
        """A copy that predicts only `class_ids` (in that order): the same trunk and features, each sub-net's
        classifier keeping those classes. A category model starts from it."""
        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        distinct = ids.unique().numel() == ids.numel()
        if ids.numel() == 0 or not distinct or int(ids.min()) < 0 or int(ids.max()) >= self.num_classes:
            raise ValueError(f"class_ids must be distinct ids in [0, {self.num_classes - 1}], got {list(class_ids)}")
        model = copy.deepcopy(self)
        for head in model.heads.values():
            head.keep_classes(ids)
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
