"""Batched feature extraction: whole-image features and discriminative-region features.

Each batch runs the model once; the predicted class's confidence map gives the region box
(`fgia.features.regions`), the region is cropped from the batch tensor on the device with `roi_align` (no
re-reading of files) and featurised again. Images are resized to size x size without cropping, so the whole
image is seen and a box maps back to the original pixels exactly. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from rich.progress import track
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms import v2

from fgia.data.images import ORIGINAL_SIZE_KEY
from fgia.data.samples import Sample
from fgia.data.torch_dataset import make_loader
from fgia.features.regions import region_boxes, scale_boxes
from fgia.runtime import pick_device


@dataclass
class FeatureSet:
    """Features of the readable images, in sample order.

    image: (N, D) whole-image embeddings; region: (N, D) region embeddings (None without regions);
    boxes: (N, 4) region boxes x1, y1, x2, y2 in original image pixels (None without regions);
    predicted: (N,) predicted class (-1 for models without logits); index: (N,) positions in the input
    samples; skipped: how many images could not be read; maps: (N, h, w) confidence maps of the predicted
    class when asked for.
    """

    image: np.ndarray
    region: np.ndarray | None
    boxes: np.ndarray | None
    predicted: np.ndarray
    index: np.ndarray
    skipped: int = 0
    maps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class BatchFeatures:
    """What `featurize_batch` returns for one batch (tensors on the model's device, boxes as map fractions)."""

    image: Tensor
    predicted: Tensor
    region: Tensor | None = None
    boxes: np.ndarray | None = None
    maps: Tensor | None = None


class ResizeWithOriginalSize:
    """PIL image -> (uint8 (3, size, size) tensor, original (width, height)).

    The eval geometry of `fgia.data.transforms.build_transform(False, size, crop_pct=None)`; the float
    conversion and normalisation happen on the device (`normalize`), so workers do less and a quarter of the
    bytes cross to the GPU.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"image size must be positive, got {size}")
        self.resize = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])

    def __call__(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        return self.resize(image), torch.tensor(image.info.get(ORIGINAL_SIZE_KEY, image.size))


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, 3, H, W) batch -> normalised float32, channels_last, on the batch's device."""
    images = v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
    return images.contiguous(memory_format=torch.channels_last)


def prepare_model(model: nn.Module, device: str | torch.device = "auto") -> nn.Module:
    """Put `model` in eval mode, channels_last, on `device` ("auto": the GPU when there is one); in place."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(dev, memory_format=torch.channels_last).eval()


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def featurize_batch(
    model: nn.Module,
    images: Tensor,
    *,
    regions: bool = True,
    threshold: float = 0.5,
    min_area: float = 0.02,
    keep_maps: bool = False,
    input_size: int | None = None,
) -> BatchFeatures:
    """Embeddings of a normalised (B, 3, H, W) batch on the model's device, plus its region embeddings/boxes.

    With `input_size` below H (a batch loaded at `region_zoom` x the model's size), the whole image is
    downsampled to `input_size` and the regions are cropped from the full-resolution batch, so a region shows
    the model detail the whole-image pass could not see.
    """
    size = input_size or images.shape[-1]
    whole = images
    if size != images.shape[-1]:
        whole = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        whole = whole.contiguous(memory_format=torch.channels_last)
    with autocast_for(images.device):
        out = model(whole)
    if out.embedding is None:
        raise ValueError(f"{type(model).__name__} returns no embedding; it cannot be used for feature extraction")
    batch = len(images)
    predicted = (
        out.logits.argmax(1) if out.logits is not None else torch.full((batch,), -1, device=images.device)
    )
    result = BatchFeatures(image=out.embedding.float(), predicted=predicted)
    if not (regions or keep_maps):
        return result
    if out.maps is None or out.logits is None:
        raise ValueError(f"{type(model).__name__} gives no class-confidence maps; extract with regions=False")
    maps = out.maps[torch.arange(batch, device=images.device), predicted].float()
    result.maps = maps if keep_maps else None
    if regions:
        result.boxes = region_boxes(maps, threshold, min_area)
        height, width = images.shape[-2:]
        pixels = scale_boxes(result.boxes, np.full(batch, width), np.full(batch, height))
        rois = torch.cat([torch.arange(batch, dtype=torch.float32)[:, None], torch.from_numpy(pixels)], 1)
        crops = roi_align(images, rois.to(images.device, images.dtype), (size, size), 1.0, 2, aligned=True)
        with autocast_for(images.device):
            result.region = model(crops.contiguous(memory_format=torch.channels_last)).embedding.float()
    return result


def extract_features(
    model: nn.Module,
    samples: Sequence[Sample],
    *,
    image_size: int = 224,
    regions: bool = True,
    threshold: float = 0.5,
    min_area: float = 0.02,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    keep_maps: bool = False,
    progress: bool = False,
    region_zoom: float = 1.0,
) -> FeatureSet:
    """Whole-image (and region) features of `samples` with a DataLoader; mean/std default to the model's.

    `region_zoom` > 1 loads images at that multiple of `image_size` and crops regions from them (see
    `featurize_batch`), at the cost of decoding and moving more pixels.

    The model is moved to the device and put in eval mode (in place). Unreadable images are skipped and counted
    in `FeatureSet.skipped`; `FeatureSet.index` says which samples the rows belong to.
    """
    if len(samples) == 0:
        raise ValueError("no samples to extract features from")
    dev = pick_device(device)
    model = prepare_model(model, dev)
    mean, std = _normalisation(model, mean, std)
    load_size = _load_size(image_size, regions, region_zoom)
    loader = make_loader(samples, ResizeWithOriginalSize(load_size), batch_size, workers=workers)
    parts: list[tuple[BatchFeatures, Tensor, Tensor]] = []
    batches = track(loader, description="extracting features") if progress else loader
    for (images, sizes), _, indices in batches:
        images = normalize(images.to(dev, non_blocking=True), mean, std)
        feats = featurize_batch(model, images, regions=regions, threshold=threshold, min_area=min_area,
                                keep_maps=keep_maps, input_size=image_size)
        parts.append((feats, sizes, indices))
    return _collect(parts, model, regions, keep_maps, skipped=len(loader.skipped))


def extract_from_images(
    model: nn.Module,
    images: Sequence[Image.Image],
    *,
    image_size: int = 224,
    regions: bool = True,
    threshold: float = 0.5,
    min_area: float = 0.02,
    device: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    keep_maps: bool = True,
    region_zoom: float = 1.0,
) -> FeatureSet:
    """The same features for in-memory PIL images (e.g. a query upload), processed exactly like a dataset."""
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    dev = pick_device(device)
    model = prepare_model(model, dev)
    mean, std = _normalisation(model, mean, std)
    resize = ResizeWithOriginalSize(_load_size(image_size, regions, region_zoom))
    tensors, sizes = zip(*(resize(image.convert("RGB")) for image in images))
    batch = normalize(torch.stack(tensors).to(dev), mean, std)
    feats = featurize_batch(model, batch, regions=regions, threshold=threshold, min_area=min_area,
                            keep_maps=keep_maps, input_size=image_size)
    return _collect([(feats, torch.stack(sizes), torch.arange(len(images)))], model, regions, keep_maps, skipped=0)


def _load_size(image_size: int, regions: bool, region_zoom: float) -> int:
    if region_zoom < 1.0:
        raise ValueError(f"region_zoom must be >= 1, got {region_zoom}")
    return round(image_size * region_zoom) if regions else image_size


def _normalisation(
    model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The caller's mean/std, else the model's (what its weights expect)."""
    if (mean is None or std is None) and not hasattr(model, "mean"):
        raise ValueError(f"{type(model).__name__} has no mean/std attributes: pass mean= and std=")
    return tuple(mean if mean is not None else model.mean), tuple(std if std is not None else model.std)


def _collect(
    parts: list[tuple[BatchFeatures, Tensor, Tensor]], model: nn.Module, regions: bool, keep_maps: bool, skipped: int
) -> FeatureSet:
    def cat(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(empty_shape, dtype)

    dim = getattr(model, "embedding_dim", 0)
    boxes = None
    if regions:
        boxes = cat(
            [scale_boxes(f.boxes, s[:, 0].numpy(), s[:, 1].numpy()) for f, s, _ in parts], (0, 4), np.float32
        )
    return FeatureSet(
        image=cat([f.image.cpu().numpy() for f, _, _ in parts], (0, dim), np.float32),
        region=cat([f.region.cpu().numpy() for f, _, _ in parts], (0, dim), np.float32) if regions else None,
        boxes=boxes,
        predicted=cat([f.predicted.cpu().numpy() for f, _, _ in parts], (0,), np.int64),
        index=cat([i.numpy() for _, _, i in parts], (0,), np.int64),
        skipped=skipped,
        maps=cat([f.maps.cpu().numpy() for f, _, _ in parts], (0, 0, 0), np.float32) if keep_maps else None,
    )
