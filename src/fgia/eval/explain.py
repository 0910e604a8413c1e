"""Where a model looks: `fgia explain` pictures and the spread of its confidence maps (the paper's Fig. 5).

`explain` shows an image beside the predicted class's confidence map blended over it, with the discriminative
region's box (`fgia.models.regions`: map resized to the input, divided by its maximum, t = 0.5, dominant
component). Models with class-confidence maps (`ModelOutput.maps`: plain's class activation maps, the CN-Nets
Conv-Net, the attention crop's first pass) show their own; the others (bilinear encoders) a Grad-CAM of the trunk's
last feature map.

The spread of a map is the standard deviation of the map of the class with the highest average activation, resized
to the input and divided by its maximum (negatives clipped, as the region step sees it): a peaked map spreads more
than a flat one. The paper's Fig. 5 compares that spread for the Conv-Net and the Norm-Net of CN-Nets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from fgia.data import load_image, make_loader
from fgia.data.samples import Sample
from fgia.features.extract import (
    ResizeWithOriginalSize,
    confidence_map,
    normalize,
    prepare_model,
)
from fgia.features.visualize import overlay
from fgia.models import load_model
from fgia.models.cnnets import CNNets
from fgia.models.output import ModelOutput
from fgia.models.regions import region_boxes, scale_boxes
from fgia.runtime import atomic_path, pick_device

PANEL_HEIGHT = 320


def grad_cam(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(Grad-CAM maps (B, h, w) of each image's predicted class on the trunk's last feature map, logits)."""
    last = getattr(getattr(model, "trunk", None), "stages", None)
    if last is None:
        raise ValueError(f"{type(model).__name__} has neither class-confidence maps nor a trunk for a Grad-CAM")
    captured: list[Tensor] = []
    handle = last[-1].register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            out: ModelOutput = model(images.detach().requires_grad_(True))
            score = out.logits.gather(1, out.logits.argmax(1, keepdim=True)).sum()
            grads = torch.autograd.grad(score, captured[0])[0]
    finally:
        handle.remove()
    weights = grads.mean((2, 3), keepdim=True)
    return F.relu((weights * captured[0]).sum(1)).detach(), out.logits.detach()


def predicted_maps(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor, str]:
    """(maps (B, h, w) of each image's predicted class, logits, where the maps come from)."""
    with torch.inference_mode():
        out: ModelOutput = model(images)
    if out.maps is None:
        maps, logits = grad_cam(model, images)
        return maps, logits, "Grad-CAM on the trunk's last feature map"
    predicted = out.logits.argmax(1)
    return out.maps[torch.arange(len(predicted)), predicted].float(), out.logits, "the model's class-confidence map"


def explain(model_dir: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike,
            image_size: int | None = None, threshold: float = 0.5, device: str = "cpu") -> dict:
    """Write `out` (PNG): the image, and its predicted class's confidence map over it with the region box.

    `image_size` defaults to the size the model was trained at (its saved `ExtractionSpec`). Returns what
    the picture shows: class, probability, box (image pixels), map source and image size.
    """
    model, info = load_model(model_dir, device=device)
    size = image_size or info["spec"].image_size
    picture = load_image(image)
    dev = pick_device(device)
    model = prepare_model(model, dev)
    batch = ResizeWithOriginalSize(size)(picture)["image"][None].to(dev)
    maps, logits, source = predicted_maps(model, normalize(batch, model.mean, model.std))
    predicted = int(logits.argmax(1)[0])
    probability = float(torch.softmax(logits.float(), 1)[0, predicted])
    fraction = region_boxes(maps, threshold, upsample_to=size)
    box = scale_boxes(fraction, np.array([picture.width]), np.array([picture.height]))[0]
    names = info.get("class_names") or []
    name = names[predicted] if predicted < len(names) else str(predicted)
    upsampled = F.interpolate(maps[:, None].cpu(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    _write_panel(picture, overlay(picture, upsampled, box), f"{name}  p={probability:.2f}  ({source})", out)
    return {"class": name, "class_id": predicted, "probability": probability, "box": [float(v) for v in box],
            "map": source, "image_size": size}


def explain_spreads(model_dir: str | os.PathLike, samples: Sequence[Sample], out: str | os.PathLike, title: str,
                    image_size: int | None = None, bins: int = 20, device: str = "cpu") -> dict:
    """The map-spread histogram of a saved model over `samples` (`image_spreads`), drawn to `out`; returns it."""
    model, info = load_model(model_dir, device=device)
    size = image_size or info["spec"].image_size
    histogram = spread_histogram(image_spreads(model, samples, size, device=device), bins)
    plot_spread_histogram(histogram, out, title, {"conv": "Conv-Net", "norm": "Norm-Net"})
    return histogram


def _write_panel(image: Image.Image, explained: Image.Image, caption: str, out: str | os.PathLike) -> None:
    """The image and its explanation side by side under a caption line, written atomically as PNG."""
    width = round(image.width * PANEL_HEIGHT / image.height)
    left = image.convert("RGB").resize((width, PANEL_HEIGHT), Image.Resampling.BILINEAR)
    right = explained.resize((width, PANEL_HEIGHT), Image.Resampling.BILINEAR)
    bar = 24
    panel = Image.new("RGB", (2 * width + 8, PANEL_HEIGHT + bar), "white")
    panel.paste(left, (0, bar))
    panel.paste(right, (width + 8, bar))
    ImageDraw.Draw(panel).text((4, 6), caption, fill="black")
    with atomic_path(out) as tmp:
        panel.save(tmp, format="PNG")


def map_spread(maps: Tensor, image_size: int) -> Tensor:
    """(B,) spread of (B, C, h, w) class maps: the std of the highest-average class's map, resized to the input,
    negatives clipped and divided by its maximum (a map without a positive value is flat: 0)."""
    picked = confidence_map(ModelOutput(logits=None, maps=maps))
    resized = F.interpolate(picked[:, None].float(), size=(image_size, image_size), mode="bilinear",
                            align_corners=False)[:, 0].clamp(min=0)
    high = resized.amax((1, 2), keepdim=True)
    normalised = torch.where(high > 1e-12, resized / high.clamp(min=1e-12), torch.ones_like(resized))
    return normalised.std((1, 2), unbiased=False)


def head_spreads(model: CNNets, lower: Tensor, image_size: int) -> Tensor:
    """(B, heads) map spreads of each CN-Nets sub-net (in `model.heads` order) from the lower trunk's output."""
    return torch.stack([map_spread(maps, image_size) for _, _, maps in model.head_outputs(lower).values()], 1)


def image_spreads(model: nn.Module, samples: Sequence[Sample], image_size: int, batch_size: int = 32,
                  workers: int = 0, device: str = "auto") -> dict[str, np.ndarray]:
    """{head: spreads} over the images (plain resize): each CN-Nets sub-net's, or the model's own maps ("maps")."""
    dev = pick_device(device)
    model = prepare_model(model, dev)
    names = list(model.heads) if isinstance(model, CNNets) else ["maps"]
    parts = []
    with torch.inference_mode():
        for batch, _, _ in make_loader(samples, ResizeWithOriginalSize(image_size), batch_size, workers=workers):
            x = normalize(batch["image"].to(dev), model.mean, model.std)
            if isinstance(model, CNNets):
                parts.append(head_spreads(model, model.lower_trunk()(x), image_size))
            else:
                out = model(x)
                if out.maps is None:
                    raise ValueError(f"{type(model).__name__} gives no class-confidence maps to measure")
                parts.append(map_spread(out.maps, image_size)[:, None])
    if not parts:
        raise ValueError("none of the images could be read")
    spreads = torch.cat(parts).cpu().numpy()
    return {name: spreads[:, i] for i, name in enumerate(names)}


def spread_histogram(spreads: dict[str, np.ndarray], bins: int = 20) -> dict:
    """Shared-bin histogram counts and mean / median spread of each head's maps."""
    values = np.concatenate(list(spreads.values()))
    edges = np.histogram_bin_edges(values, bins=bins, range=(0.0, max(float(values.max()), 1e-6)))
    return {"bin_edges": edges.round(4).tolist(),
            "heads": {name: {"counts": np.histogram(v, bins=edges)[0].tolist(), "mean": float(v.mean()),
                             "median": float(np.median(v)), "n": int(len(v))} for name, v in spreads.items()}}


def plot_spread_histogram(histogram: dict, out: str | os.PathLike, title: str,
                          labels: dict[str, str] | None = None) -> Path:
    """The Fig. 5-style picture (one histogram per head, shared bins) as a PNG, written atomically."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("pictures need matplotlib: pip install 'fgia[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(histogram["bin_edges"])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, head in histogram["heads"].items():
        label = f"{(labels or {}).get(name, name)} (mean {head['mean']:.3f})"
        ax.stairs(head["counts"], edges, fill=True, alpha=0.45, label=label)
    ax.set_xlabel("standard deviation of the normalised confidence map")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
