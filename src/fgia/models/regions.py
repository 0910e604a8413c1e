"""The discriminative region of an image from its class-confidence map (the paper's recipe), shared by the
models that crop it (attention crop) and by feature extraction.

Resize the map to the input size (`upsample_to`), divide it by its maximum, threshold it (t = 0.5), label
connected components (8-connectivity), drop components smaller than `min_area` (a fraction of the map), keep the
dominant one (largest area, ties by total confidence) and return its enclosing box. When nothing survives (or the
map has no positive value) the whole image is the region.
Boxes are fractions of the map's width/height (x1, y1, x2, y2 in [0, 1]), so callers scale them to any image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

WHOLE = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def normalize_map(confidence: np.ndarray) -> np.ndarray:
    """A 2-D map divided by its maximum, negative values clipped to 0; a map without a positive value becomes
    all ones (no part stands out)."""
    confidence = np.asarray(confidence, dtype=np.float32)
    if confidence.ndim != 2:
        raise ValueError(f"a confidence map must be 2-D (h, w), got shape {confidence.shape}")
    if not np.isfinite(confidence).all():
        raise ValueError("confidence map contains NaN or infinite values")
    high = float(confidence.max())
    if high <= 1e-12:
        return np.ones_like(confidence)
    return np.maximum(confidence, 0.0) / high


def region_box(confidence: np.ndarray, threshold: float = 0.5, min_area: float = 0.02) -> np.ndarray:
    """Box (x1, y1, x2, y2) of the dominant component of a 2-D map, as fractions of its width/height."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area is a fraction of the map in [0, 1), got {min_area}")
    norm = normalize_map(confidence)
    h, w = norm.shape
    labels, count = ndimage.label(norm >= threshold, structure=_EIGHT_CONNECTED)
    if count == 0:
        return WHOLE.copy()
    ids = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    masses = np.bincount(labels.ravel(), weights=norm.ravel(), minlength=count + 1)[1:]
    keep = areas >= max(1.0, min_area * h * w)
    if not keep.any():
        return WHOLE.copy()
    # lexsort: last key is primary -> largest area first, then largest mass.
    best = ids[keep][np.lexsort((-masses[keep], -areas[keep]))[0]]
    rows, cols = ndimage.find_objects(labels, max_label=best)[best - 1]
    return np.array([cols.start / w, rows.start / h, cols.stop / w, rows.stop / h], dtype=np.float32)


def region_boxes(maps: Tensor | np.ndarray, threshold: float = 0.5, min_area: float = 0.02,
                 upsample_to: int | None = None) -> np.ndarray:
    """`region_box` for each map of a (B, h, w) batch -> (B, 4) fractional boxes; with `upsample_to`, each map is
    first resized (bilinear) to that size, the input size, so the box is not limited to the map's coarse grid."""
    tensor = maps.detach().float().cpu() if isinstance(maps, Tensor) else torch.as_tensor(np.asarray(maps))
    if tensor.ndim != 3:
        raise ValueError(f"expected a (B, h, w) batch of maps, got shape {tuple(tensor.shape)}")
    if upsample_to is not None and len(tensor):
        tensor = F.interpolate(tensor[:, None].float(), size=(upsample_to, upsample_to), mode="bilinear",
                               align_corners=False)[:, 0]
    array = tensor.numpy()
    if array.ndim != 3:
        raise ValueError(f"expected a (B, h, w) batch of maps, got shape {array.shape}")
    return np.stack([region_box(m, threshold, min_area) for m in array]) if len(array) else np.zeros((0, 4), np.float32)


def scale_boxes(boxes: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Fractional (B, 4) boxes -> pixel boxes of images of the given (B,) widths and heights."""
    scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float32)
    return boxes * scale
