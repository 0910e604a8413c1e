"""Pictures for people: an image with its class-confidence map blended in and the region box drawn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor

from fgia.models.regions import normalize_map


def overlay(
    image: Image.Image,
    confidence_map: np.ndarray | Tensor,
    box: Sequence[float] | None = None,
    alpha: float = 0.45,
    box_color: str = "lime",
) -> Image.Image:
    """RGB copy of `image` with the (h, w) map as a heat map (blue -> yellow -> red) and `box` in image pixels."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    array = confidence_map.detach().float().cpu().numpy() if isinstance(confidence_map, Tensor) else confidence_map
    base = image.convert("RGB")
    gray = Image.fromarray(np.uint8(np.round(normalize_map(array) * 255)), mode="L")
    gray = gray.resize(base.size, Image.Resampling.BILINEAR)
    heat = ImageOps.colorize(gray, black="blue", white="red", mid="yellow")
    result = Image.blend(base, heat, alpha)
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"box must be (x1, y1, x2, y2), got {box!r}")
        x1, y1, x2, y2 = (float(v) for v in box)
        width = max(2, round(min(base.size) / 100))
        ImageDraw.Draw(result).rectangle((x1, y1, x2 - 1, y2 - 1), outline=box_color, width=width)
    return result
