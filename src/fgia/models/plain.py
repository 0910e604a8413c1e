"""The control for every comparison: backbone + global average pooling + a linear classifier.

Its class-confidence maps are class activation maps (the linear weights applied at every position), so the
discriminative-region pipeline runs on the baseline too.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fgia.models.backbones import create_trunk
from fgia.models.frozen import FrozenLowerTrunk, check_frozen_stages
from fgia.models.output import ModelOutput
from fgia.models.registry import register_model


@register_model(name="plain")
class PlainNet(FrozenLowerTrunk):
    """Trunk -> GAP (the embedding) -> dropout -> linear (the logits); maps = class activation maps.

    `frozen_stages` fixes the trunk's first stages (`fgia.models.frozen`)."""

    def __init__(
        self, num_classes: int, backbone: str = "resnet50", weights: str | Path | None = None, drop_rate: float = 0.0,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"plain needs num_classes >= 1 and 0 <= drop_rate < 1; got {num_classes=}, {drop_rate=}")
        self.trunk = create_trunk(backbone, weights)
        check_frozen_stages(frozen_stages, len(self.trunk.stages) - 1, "plain")
        self.frozen_stages = frozen_stages
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.trunk.out_channels, num_classes)
        self.num_classes = num_classes
        self.embedding_dim = self.trunk.out_channels
        self.mean, self.std = self.trunk.mean, self.trunk.std
        self.config = {"name": "plain", "num_classes": num_classes, "backbone": backbone, "drop_rate": drop_rate,
                       "frozen_stages": frozen_stages}
        self.freeze_lower_trunk()

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk.stages[: self.frozen_stages]

    def forward_top(self, lower: Tensor) -> ModelOutput:
        fmap = self.trunk.stages[self.frozen_stages :](lower)
        embedding = fmap.mean((2, 3))
        # GAP is linear, so GAP of these maps equals the logits: the maps are exact per-position class evidence.
        maps = F.conv2d(fmap, self.fc.weight[:, :, None, None], self.fc.bias)
        return ModelOutput(logits=self.fc(self.drop(embedding)), embedding=embedding, maps=maps)
