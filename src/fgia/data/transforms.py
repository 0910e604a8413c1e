"""Train and eval image transforms (torchvision.transforms.v2): PIL RGB image -> normalised float tensor."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(
    train: bool,
    size: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    crop_pct: float | None = 0.875,
    scale_min: float = 0.25,
    jitter: float = 0.2,
    hflip: bool = True,
) -> v2.Compose:
    """Train: random resized crop (area >= `scale_min`), flip, light colour jitter. Eval: resize the short side
    to size / `crop_pct` and centre-crop, or with `crop_pct=None` a plain resize to size x size."""
    if size < 1:
        raise ValueError(f"transform size must be positive, got {size}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if train:
        steps = [v2.RandomResizedCrop(size, scale=(scale_min, 1.0), antialias=True)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if jitter > 0:
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    elif crop_pct is None:
        steps = [v2.Resize((size, size), antialias=True)]
    else:
        steps = [v2.Resize(round(size / crop_pct), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
