"""Attention-crop localisation model: the survey's localisation-classification family in its simplest form.

First pass on the whole image -> class activation map (CAM) of the predicted class -> the discriminative
region's box (`fgia.models.regions`) -> crop of the input (roi_align) -> second pass with the same weights
-> fused logits. Both passes are trained with the classification loss (`head_logits` "full" and "crop").
`frozen_stages` fixes the trunk's first stages (`fgia.models.frozen.FrozenStages`); their output cannot be cached
as the other models' is, since the second pass needs the image itself, so they still run twice per image and step.
`first_pass()` is the whole-image pass alone, which can train on the cache: RA-CNN pre-trains its classification
sub-network before the attention, and a crop taken from an untrained CAM is a random one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.ops import roi_align

from fgia.models.backbones import create_trunk
from fgia.models.frozen import FrozenLowerTrunk, FrozenStages, check_frozen_stages
from fgia.models.output import ModelOutput
from fgia.models.regions import region_boxes
from fgia.models.registry import register_model


class AttentionCrop(FrozenStages):
    """Two passes of one trunk + 1x1-conv classifier (its output is the CAM; GAP of it gives the logits).

    The embedding is the GAP feature of both passes, concatenated (2C).
    """

    def __init__(self, trunk: nn.Module, num_classes: int, threshold: float = 0.5, min_area: float = 0.02,
                 crop_size: int | None = None, config: dict | None = None, frozen_stages: int = 0):
        super().__init__()
        if frozen_stages:
            check_frozen_stages(frozen_stages, len(trunk.stages) - 1, "attention_crop")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be >= 1 (or None for the input size), got {crop_size}")
        self.trunk, self.threshold, self.min_area, self.crop_size = trunk, threshold, min_area, crop_size
        self.classifier = nn.Conv2d(trunk.out_channels, num_classes, 1)
        self.num_classes, self.embedding_dim = num_classes, 2 * trunk.out_channels
        self.mean, self.std, self.config = trunk.mean, trunk.std, config
        self.frozen_stages = frozen_stages
        self.freeze_lower_trunk()

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk.stages[: self.frozen_stages] if self.frozen_stages else nn.Sequential()

    def _pass(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.classify(self.trunk(images))

    def classify(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, CAMs, GAP feature) of one pass's last feature map."""
        cams = self.classifier(fmap)
        return cams.mean(dim=(2, 3)), cams, fmap.mean(dim=(2, 3))

    def first_pass(self) -> AttentionFirstPass:
        """The whole-image pass alone, sharing this model's weights (see the module docstring)."""
        if not self.frozen_stages:
            raise ValueError("the first pass trains on cached frozen stages; this model has frozen_stages=0")
        return AttentionFirstPass(self)

    def crop_boxes(self, cams: Tensor, logits: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Pixel boxes (B, 4) as (x1, y1, x2, y2): the region of the CAM of each image's predicted class."""
        picked = cams[torch.arange(len(cams), device=cams.device), logits.argmax(dim=1)]
        boxes = torch.from_numpy(region_boxes(picked, self.threshold, self.min_area)).to(cams.device)
        height, width = image_size
        return boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)

    def forward(self, images: Tensor) -> ModelOutput:
        logits_full, cams, feat_full = self._pass(images)
        boxes = self.crop_boxes(cams, logits_full, tuple(images.shape[-2:]))
        size = (self.crop_size, self.crop_size) if self.crop_size else tuple(images.shape[-2:])
        index = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None]
        crops = roi_align(images, torch.cat([index, boxes], dim=1).to(images.dtype), output_size=size, aligned=True)
        logits_crop, _, feat_crop = self._pass(crops)
        return ModelOutput(
            logits=(logits_full + logits_crop) / 2,
            embedding=torch.cat([feat_full, feat_crop], dim=1),
            head_logits={"full": logits_full, "crop": logits_crop},
            maps=cams,
        )


class AttentionFirstPass(FrozenLowerTrunk):
    """An `AttentionCrop`'s whole-image pass as a model of its own (same modules, so training it trains them):
    logits and CAMs from the cached output of the frozen stages."""

    def __init__(self, model: AttentionCrop):
        super().__init__()
        self.crop_model = model
        self.frozen_stages, self.num_classes = model.frozen_stages, model.num_classes
        self.embedding_dim = model.trunk.out_channels
        self.mean, self.std = model.mean, model.std

    def lower_trunk(self) -> nn.Sequential:
        return self.crop_model.lower_trunk()

    def forward_top(self, lower: Tensor) -> ModelOutput:
        logits, cams, feature = self.crop_model.classify(self.crop_model.trunk.stages[self.frozen_stages :](lower))
        return ModelOutput(logits=logits, embedding=feature, maps=cams)


@register_model(name="attention_crop")
def attention_crop(num_classes: int, backbone: str = "resnet18", weights: str | None = None,
                   threshold: float = 0.5, min_area: float = 0.02, crop_size: int | None = None,
                   frozen_stages: int = 0) -> AttentionCrop:
    """Attention-crop model: CAM box of the predicted class, second pass on the crop, fused logits."""
    config = {"name": "attention_crop", "num_classes": num_classes, "backbone": backbone, "threshold": threshold,
              "min_area": min_area, "crop_size": crop_size, "frozen_stages": frozen_stages}
    return AttentionCrop(create_trunk(backbone, weights), num_classes, threshold, min_area, crop_size, config,
                         frozen_stages)
