"""Robust image loading: every readable file comes back as an 8-bit RGB PIL image, every other one as ImageLoadError."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fgia.data.samples import Sample

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Larger images are reduced to about this many pixels (JPEGs while decoding, via draft mode)."""
MAX_DECODE_PIXELS = Image.MAX_IMAGE_PIXELS
"""Images that would need more pixels than this decoded (after any JPEG draft reduction) are refused."""
BACKGROUND = (128, 128, 128)
"""Neutral grey that transparent areas are composited onto."""
ORIGINAL_SIZE_KEY = "fgia_original_size"
"""`image.info` key holding (width, height) before any size reduction, for mapping boxes onto the image."""
_ORIENTATION_TAG = 0x0112
_TRANSPOSING = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees


class ImageLoadError(OSError):
    """An image file that cannot be decoded; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self):  # rebuilt from (path, reason) when sent back from a DataLoader worker
        return type(self), (self.path, self.reason)


def load_image(
    path: str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
) -> Image.Image:
    """Load `path` as 8-bit RGB with EXIF orientation applied.

    Grayscale, palette, CMYK and 16-bit images are converted (16-bit scaled to 8 bits), alpha is composited on
    grey, images above `max_pixels` are reduced (JPEG draft decoding keeps memory low). Raises ImageLoadError
    for missing, corrupt or truncated files and for images above `max_decode_pixels`.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with our limit
            with Image.open(path) as im:
                original = im.size
                if max_pixels and im.width * im.height > max_pixels and im.format == "JPEG":
                    scale = math.sqrt(max_pixels / (im.width * im.height))
                    im.draft(None, (max(1, int(im.width * scale)), max(1, int(im.height * scale))))
                if im.width * im.height > max_decode_pixels:
                    raise ImageLoadError(
                        path, f"{original[0]}x{original[1]} pixels exceeds the decompression-bomb limit "
                        f"of {max_decode_pixels} pixels"
                    )
                im.load()
                if im.getexif().get(_ORIENTATION_TAG) in _TRANSPOSING:
                    original = original[::-1]
                out = _to_rgb(ImageOps.exif_transpose(im))
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format (corrupt or not an image)") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"exceeds the decompression-bomb limit ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports truncated or broken data with these
        raise ImageLoadError(path, str(e) or type(e).__name__) from None
    if max_pixels and out.width * out.height > max_pixels:
        scale = math.sqrt(max_pixels / (out.width * out.height))
        out.thumbnail((max(1, int(out.width * scale)), max(1, int(out.height * scale))), Image.Resampling.LANCZOS)
    out.info[ORIGINAL_SIZE_KEY] = original
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float pixels to 0..255: integer modes hold 16-bit data, floats 0..1 or 0..255."""
    arr = arr.astype(np.float64)
    if mode == "F":
        arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
    else:
        arr = arr / 257.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def check_images(
    samples: Sequence[Sample], workers: int = 4, max_pixels: int | None = 512 * 512
) -> tuple[list[Sample], list[tuple[Sample, str]]]:
    """Decode every sample's image; return the readable samples and (sample, reason) for the broken ones.

    Files are fully decoded (truncation is only found that way); `max_pixels` keeps large JPEGs cheap.
    """

    def reason(sample: Sample) -> str | None:
        try:
            load_image(sample.path, max_pixels=max_pixels)
        except ImageLoadError as e:
            return e.reason
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(reason, samples))
    ok = [s for s, r in zip(samples, reasons, strict=True) if r is None]
    broken = [(s, r) for s, r in zip(samples, reasons, strict=True) if r is not None]
    return ok, broken
