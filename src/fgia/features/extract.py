"""Batched feature extraction: whole-image features and discriminative-region features, for one or many models.

Each batch is decoded once and resized to size x size without cropping (so the whole image is seen and a box
maps back to the original pixels exactly). Models that share a frozen lower trunk (`fgia.models.frozen`) form one
`TrunkGroup`: the lower stages run once per batch and every model runs only its own top, so the unified and the
category-specific models of a system cost one trunk pass plus their tops, not one whole network each.

The discriminative region (`fgia.models.regions`) comes from one model's class-confidence maps (`region_from`);
it is cropped from the batch tensor on the device with `roi_align` (from an image loaded at `region_zoom` x the
model's size when that is above 1) and featurised again by every model. With `flip`, each embedding is the mean
of the image's and its mirror image's. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.ops import roi_align
from torchvision.transforms import v2

from fgia.data.images import ORIGINAL_SIZE_KEY
from fgia.data.samples import Sample
from fgia.data.torch_dataset import make_loader
from fgia.models.frozen import lower_and_top, module_digest
from fgia.models.output import ModelOutput
from fgia.models.regions import region_boxes, scale_boxes
from fgia.models.spec import ExtractionSpec, model_spec
from fgia.progress import track_batches
from fgia.runtime import pick_device


@dataclass
class FeatureSet:
    """Features of the readable images, in sample order.

    image: (N, D) whole-image embeddings; region: (N, D) region embeddings (None without regions);
    boxes: (N, 4) region boxes x1, y1, x2, y2 in original image pixels (None without regions);
    predicted: (N,) predicted class (-1 for models without logits); index: (N,) positions in the input
    samples; skipped: how many images could not be read; maps: (N, h, w) confidence maps of each
    image's strongest class when asked for (None for a model without class-confidence maps).
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

    def rows(self, keep: np.ndarray) -> FeatureSet:
        """The rows of the images whose sample positions are in `keep` (each must be present)."""
        pos = np.searchsorted(self.index, keep)
        if len(keep) and (pos.max() >= len(self.index) or not np.array_equal(self.index[pos], keep)):
            raise ValueError("rows(): some requested images are not in this feature set")
        pick = (lambda a: None if a is None else a[pos])
        return FeatureSet(self.image[pos], pick(self.region), pick(self.boxes), self.predicted[pos], keep,
                          maps=pick(self.maps))


@dataclass
class BatchFeatures:
    """One model's features of one batch (tensors on the device, boxes as map fractions)."""

    image: Tensor
    predicted: Tensor
    region: Tensor | None = None
    boxes: np.ndarray | None = None
    maps: Tensor | None = None


class TrunkGroup(nn.Module):
    """Models grouped by their frozen lower trunk: each distinct lower trunk runs once per input batch.

    Models without frozen stages share the identity "trunk" and run whole. `forward(x)` returns every model's
    `ModelOutput`; equal lower trunks are recognised by their weights, not by identity.
    """

    def __init__(self, models: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("no models to extract features with")
        self.models = nn.ModuleDict(models)
        self.lowers = nn.ModuleList()
        self.groups: list[list[str]] = []
        self.tops: dict[str, Callable[[Tensor], ModelOutput]] = {}
        digests: list[str] = []
        for name, model in models.items():
            lower, self.tops[name] = lower_and_top(model)
            digest = module_digest(lower)
            if digest not in digests:
                digests.append(digest)
                self.lowers.append(lower)
                self.groups.append([])
            self.groups[digests.index(digest)].append(name)

    def forward(self, x: Tensor) -> dict[str, ModelOutput]:
        out = {}
        for lower, names in zip(self.lowers, self.groups):
            shared = lower(x)
            for name in names:
                out[name] = self.tops[name](shared)
        return {name: out[name] for name in self.models}


class ResizeWithOriginalSize:
    """PIL image -> {"image": uint8 (3, size, size), "size": original (width, height)}, plus "zoomed": the image
    at `zoom_size` (regions are cropped from it) when that is given.

    The eval geometry of `fgia.data.transforms.build_transform(False, size, crop_pct=None)`, each copy resized
    from the original once; the float conversion and normalisation happen on the device (`normalize`), so
    workers do less and a quarter of the bytes cross to the GPU.
    """

    def __init__(self, size: int, zoom_size: int | None = None) -> None:
        if size < 1 or (zoom_size is not None and zoom_size < size):
            raise ValueError(f"image size must be positive and the zoomed size at least as large, got {size}, "
                             f"{zoom_size}")
        self.resize = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])
        self.zoom = v2.Compose([v2.ToImage(), v2.Resize((zoom_size, zoom_size), antialias=True)]) if zoom_size else None

    def __call__(self, image: Image.Image) -> dict[str, Tensor]:
        out = {"image": self.resize(image), "size": torch.tensor(image.info.get(ORIGINAL_SIZE_KEY, image.size))}
        if self.zoom is not None:
            out["zoomed"] = self.zoom(image)
        return out


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, 3, H, W) batch -> normalised float32, channels_last, on the batch's device."""
    images = v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), list(mean), list(std))
    return images.contiguous(memory_format=torch.channels_last)


_PREPARED: weakref.WeakKeyDictionary[nn.Module, torch.device] = weakref.WeakKeyDictionary()


def prepare_model(model: nn.Module, device: str | torch.device = "auto") -> nn.Module:
    """Put `model` in eval mode, channels_last, on `device` ("auto": the GPU when there is one); in place.

    A model this prepared for `device` and that is still in eval mode there is returned as it is: walking every
    module again cost a single query a seventh of its extraction time."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    first = next(model.parameters(), None)
    if _PREPARED.get(model) == dev and not model.training and (first is None or first.device.type == dev.type):
        return model
    model.to(dev, memory_format=torch.channels_last).eval()
    _PREPARED[model] = dev
    return model


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def confidence_map(out: ModelOutput) -> Tensor:
    """(B, h, w) map of each image's class whose confidence map has the highest average activation."""
    if out.maps is None:
        raise ValueError("the model gives no class-confidence maps; extract with regions=False")
    best = out.maps.mean((2, 3)).argmax(1)
    return out.maps[torch.arange(len(best), device=best.device), best].float()


def _embeddings(group: TrunkGroup, x: Tensor, flip: bool) -> tuple[dict[str, ModelOutput], dict[str, Tensor]]:
    """Every model's output for `x` and its embedding (averaged with the mirror image's when `flip`)."""
    with autocast_for(x.device):
        outputs = group(x)
        mirrored = group(x.flip(-1)) if flip else {}
    embeddings = {}
    for name, out in outputs.items():
        if out.embedding is None:
            raise ValueError(f"{type(group.models[name]).__name__} returns no embedding; it cannot be used for "
                             "feature extraction")
        embedding = out.embedding.float()
        if flip:
            embedding = (embedding + mirrored[name].embedding.float()) / 2
        embeddings[name] = embedding
    return outputs, embeddings


@torch.inference_mode()
def featurize_batch(
    models: nn.Module | Mapping[str, nn.Module] | TrunkGroup,
    images: Tensor,
    zoomed: Tensor | None = None,
    *,
    spec: ExtractionSpec = ExtractionSpec(),
    keep_maps: bool = False,
) -> dict[str, BatchFeatures]:
    """Every model's features of a normalised (B, 3, S, S) batch on the models' device, keyed by model name
    (a single model is called "model"), plus region embeddings and boxes when `spec.regions`.

    Regions are cropped from `zoomed` (the same images at region_zoom x S, uint8 as loaded) when given, else from
    `images`, and resized to S, so a zoomed region shows the model detail the whole-image pass could not see; a
    zoomed crop is normalised after cropping (the same values: cropping interpolates linearly), a quarter of the
    work of normalising the zoomed batch. The box comes from `spec.region_from`'s maps (default: the first model)
    and every model featurises the same crop.
    """
    group = as_group(models)
    names = list(group.models)
    region_from = spec.region_from or names[0]
    regions, flip = spec.regions, spec.flip
    size = images.shape[-1]
    outputs, embeddings = _embeddings(group, images, flip)
    batch = len(images)
    result = {}
    for name, out in outputs.items():
        predicted = out.logits.argmax(1) if out.logits is not None else torch.full((batch,), -1, device=images.device)
        result[name] = BatchFeatures(image=embeddings[name], predicted=predicted)
    if not (regions or keep_maps):
        return result
    maps = confidence_map(outputs[region_from])
    if keep_maps:
        for name in names:
            if name == region_from:
                result[name].maps = maps
            elif outputs[name].maps is not None:
                result[name].maps = confidence_map(outputs[name])
    if regions:
        boxes = region_boxes(maps, spec.threshold, spec.min_area, upsample_to=size)
        crops = crop_regions(images if zoomed is None else zoomed, boxes, size, spec)
        _, region_embeddings = _embeddings(group, crops, flip)
        for name in names:
            result[name].region, result[name].boxes = region_embeddings[name], boxes
    return result


def crop_regions(source: Tensor, boxes: np.ndarray, size: int, spec: ExtractionSpec) -> Tensor:
    """The fractional `boxes` (B, 4) of a batch cropped with `roi_align` and resized to size x size, normalised,
    channels_last. `source` is the normalised batch, or the uint8 zoomed one (normalised after cropping).

    torchvision's CPU `roi_align` runs on one thread, so on CPU the batch is split into one slice per torch thread
    (the same values; a batch of 32 crops from 320 px took half the time on 2 cores)."""
    height, width = source.shape[-2:]
    pixels = torch.from_numpy(scale_boxes(boxes, np.full(len(boxes), width), np.full(len(boxes), height)))
    loaded = source.dtype == torch.uint8

    def crop(rows: slice) -> Tensor:
        part = v2.functional.to_dtype(source[rows], torch.float32, scale=True) if loaded else source[rows]
        rois = torch.cat([torch.arange(len(part), dtype=torch.float32)[:, None], pixels[rows]], 1)
        out = roi_align(part, rois.to(part.device, part.dtype), (size, size), 1.0, 2, aligned=True)
        return v2.functional.normalize(out, list(spec.mean), list(spec.std)) if loaded else out

    threads = torch.get_num_threads() if source.device.type == "cpu" else 1
    if threads < 2 or len(source) < 2:
        crops = crop(slice(None))
    else:
        bounds = np.linspace(0, len(source), min(threads, len(source)) + 1).astype(int)
        with ThreadPoolExecutor(len(bounds) - 1) as pool:
            crops = torch.cat(list(pool.map(crop, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])])))
    return crops.contiguous(memory_format=torch.channels_last)


SINGLE = "model"
"""The name of the model when a single one is given."""


def as_group(models: nn.Module | Mapping[str, nn.Module] | TrunkGroup) -> TrunkGroup:
    """`models` as a TrunkGroup (a single model is named "model")."""
    if isinstance(models, TrunkGroup):
        return models
    return TrunkGroup({SINGLE: models} if isinstance(models, nn.Module) else dict(models))


def extract_models(
    models: Mapping[str, nn.Module] | TrunkGroup,
    samples: Sequence[Sample],
    spec: ExtractionSpec | None = None,
    *,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    keep_maps: bool = False,
    progress: bool = False,
) -> dict[str, FeatureSet]:
    """Whole-image (and region) features of `samples` under every model, in one pass over the images.

    `spec` (default: the one the models carry, see `group_spec`) says the input size, normalisation and region
    settings; `spec.region_zoom` > 1 loads images at that multiple of the size and crops regions from them (see
    `featurize_batch`). The models are moved to the device and put in eval mode (in place). Unreadable images are
    skipped and counted in `FeatureSet.skipped`; `FeatureSet.index` says which samples the rows belong to.
    """
    if len(samples) == 0:
        raise ValueError("no samples to extract features from")
    dev = pick_device(device)
    group = prepare_model(as_group(models), dev)
    spec = spec or group_spec(group)
    loader = make_loader(samples, _resize(spec), batch_size, workers=workers)
    parts: list[tuple[dict[str, BatchFeatures], Tensor, Tensor]] = []
    batches = track_batches(loader, "extracting features", enabled=progress)
    for batch, _, indices in batches:
        feats = featurize_batch(group, *normalised_batch(batch, dev, spec), spec=spec, keep_maps=keep_maps)
        parts.append((feats, batch["size"], indices))
    return {name: collect_features([(f[name], s, i) for f, s, i in parts], group.models[name], spec.regions, keep_maps,
                           skipped=len(loader.skipped)) for name in group.models}


def extract_features(model: nn.Module, samples: Sequence[Sample], spec: ExtractionSpec | None = None,
                     **options) -> FeatureSet:
    """`extract_models` for one model (same options)."""
    return extract_models({SINGLE: model}, samples, spec, **options)[SINGLE]


def extract_from_images(
    models: nn.Module | Mapping[str, nn.Module] | TrunkGroup,
    images: Sequence[Image.Image],
    spec: ExtractionSpec | None = None,
    *,
    device: str = "auto",
    keep_maps: bool = True,
) -> FeatureSet | dict[str, FeatureSet]:
    """The same features for in-memory PIL images (e.g. query uploads), processed exactly like a dataset: a
    FeatureSet for one model, a dict of them for a mapping or group of models."""
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    dev = pick_device(device)
    group = prepare_model(as_group(models), dev)
    spec = spec or group_spec(group)
    resize = _resize(spec)
    batch = default_collate([resize(image.convert("RGB")) for image in images])
    feats = featurize_batch(group, *normalised_batch(batch, dev, spec), spec=spec, keep_maps=keep_maps)
    index = torch.arange(len(images))
    out = {name: collect_features([(f, batch["size"], index)], group.models[name], spec.regions, keep_maps, skipped=0)
           for name, f in feats.items()}
    return out[SINGLE] if isinstance(models, nn.Module) and not isinstance(models, TrunkGroup) else out


def group_spec(models: nn.Module | Mapping[str, nn.Module] | TrunkGroup, **changes: Any) -> ExtractionSpec:
    """The spec the models carry (the first model's) with `changes`. They must agree on the normalisation, and on
    the input size unless `changes` sets it."""
    specs = [model_spec(model) for model in as_group(models).models.values()]
    inputs = {(s.mean, s.std) if "image_size" in changes else (s.image_size, s.mean, s.std) for s in specs}
    if len(inputs) > 1:
        raise ValueError(f"the models expect different inputs ({'' if 'image_size' in changes else 'size, '}mean, "
                         f"std) {sorted(inputs)}: extract them apart or pass one spec")
    return specs[0].with_(**changes)


def zoom_size(spec: ExtractionSpec) -> int | None:
    """The size regions are cropped from, when it differs from the image size (else None)."""
    size = round(spec.image_size * spec.region_zoom)
    return size if spec.regions and size != spec.image_size else None


def _resize(spec: ExtractionSpec) -> ResizeWithOriginalSize:
    """The loader transform: the image at the spec's size, and at the zoomed size regions are cropped from."""
    return ResizeWithOriginalSize(spec.image_size, zoom_size(spec))


def normalised_batch(batch: dict[str, Tensor], device: torch.device,
                     spec: ExtractionSpec) -> tuple[Tensor, Tensor | None]:
    """(images normalised, zoomed images as loaded or None) of a loaded batch, on `device` (what
    `featurize_batch` takes)."""
    zoomed = batch.get("zoomed")
    return (normalize(batch["image"].to(device, non_blocking=True), spec.mean, spec.std),
            None if zoomed is None else zoomed.to(device, non_blocking=True))


def collect_features(
    parts: list[tuple[BatchFeatures, Tensor, Tensor]], model: nn.Module, regions: bool, keep_maps: bool, skipped: int
) -> FeatureSet:
    def cat(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(empty_shape, dtype)

    dim = getattr(model, "embedding_dim", 0)
    has_maps = keep_maps and all(f.maps is not None for f, _, _ in parts)
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
        maps=cat([f.maps.cpu().numpy() for f, _, _ in parts], (0, 0, 0), np.float32) if has_maps else None,
    )
