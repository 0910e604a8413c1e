"""Robust image loading: every readable file comes back as an 8-bit RGB PIL image, every other one as ImageLoadError."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from fgia.data.samples import Sample

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Larger images are reduced to about this many pixels (JPEGs while decoding, via draft mode; others right
after decoding, before any conversion)."""
MAX_DECODE_BYTES = 4 * Image.MAX_IMAGE_PIXELS
"""Images whose decoded pixels (after any JPEG draft reduction) would take more bytes than this are refused:
width x height x bytes per pixel, so a 16-bit or RGBA image counts for what it costs."""
_ROWS_PER_STEP = 256  # rows converted at a time from 16/32-bit to 8-bit: bounded temporaries
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


class ImageTooLargeError(ImageLoadError):
    """An image whose decoded pixels would take more memory than allowed (a decompression bomb)."""


def decoded_bytes(image: Image.Image) -> int:
    """Bytes Pillow needs to hold `image`'s pixels: width x height x its in-memory pixel size (multi-band 8-bit
    modes take 4 bytes a pixel, 16-bit greyscale 2)."""
    mode = ImageMode.getmode(image.mode)
    pixel = 4 if len(mode.bands) > 1 else np.dtype(mode.typestr).itemsize
    return image.width * image.height * pixel


def load_image(
    path: str | os.PathLike,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = MAX_DECODE_BYTES,
) -> Image.Image:
    """Load `path` as 8-bit RGB with EXIF orientation applied.

    Grayscale, palette, CMYK and 16-bit images are converted (16-bit scaled to 8 bits), alpha is composited on
    grey, images above `max_pixels` are reduced (JPEGs while decoding, by draft mode; others before any
    conversion, so memory stays near the decoded size). Raises ImageLoadError for missing, corrupt or
    truncated files and for images whose decoded pixels would take more than `max_decode_bytes`.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with our limit
            with Image.open(path) as im:
                original = im.size
                if max_pixels and im.width * im.height > max_pixels and im.format == "JPEG":
                    im.draft(None, _fit(im.size, max_pixels))
                if decoded_bytes(im) > max_decode_bytes:
                    raise ImageTooLargeError(
                        path, f"{original[0]}x{original[1]} {im.mode} needs {decoded_bytes(im) / 1e6:.0f} MB decoded, "
                        f"over the decompression-bomb limit of {max_decode_bytes / 1e6:.0f} MB"
                    )
                im.load()
                if im.getexif().get(_ORIENTATION_TAG) in _TRANSPOSING:
                    original = original[::-1]
                # The decoded pixels are freed when `im` closes: reduce (or copy) them first, convert after.
                out = _shrink(im, max_pixels) if max_pixels and im.width * im.height > max_pixels else im.copy()
            ImageOps.exif_transpose(out, in_place=True)
            out = _to_rgb(out)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format (corrupt or not an image)") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(path, f"exceeds the decompression-bomb limit ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports truncated or broken data with these
        raise ImageLoadError(path, str(e) or type(e).__name__) from None
    out.info[ORIGINAL_SIZE_KEY] = original
    return out


def _fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """`size` scaled down to about `max_pixels` pixels, aspect kept."""
    scale = math.sqrt(max_pixels / (size[0] * size[1]))
    return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))


def _shrink(im: Image.Image, max_pixels: int) -> Image.Image:
    """A Lanczos-reduced copy of a decoded image, in its own mode (16-bit included) so the conversions after it
    touch few pixels; palette and bilevel images, which Pillow only resizes by nearest neighbour, are converted
    first."""
    if im.mode in ("P", "PA", "1"):
        im = _to_rgb(im)
    deep = im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # Pillow's box pre-reduction skips these
    return im.resize(_fit(im.size, max_pixels), Image.Resampling.LANCZOS, reducing_gap=None if deep else 2.0)


def _to_rgb(im: Image.Image) -> Image.Image:
    """`im` itself when it is RGB already, else an RGB conversion."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _deep_to_l(im).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _deep_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float pixels to 8-bit greyscale, a band of rows at a time: integer modes hold 16-bit
    data (scaled by 1/257), floats 0..1 (scaled by 255) or 0..255."""
    scale = 1 / 257.0
    if im.mode == "F":
        scale = 255.0 if im.getextrema()[1] <= 1.0 else 1.0
    out = np.empty((im.height, im.width), np.uint8)
    for top in range(0, im.height, _ROWS_PER_STEP):
        band = np.asarray(im.crop((0, top, im.width, min(im.height, top + _ROWS_PER_STEP))), dtype=np.float64)
        out[top : top + len(band)] = np.clip(np.rint(band * scale), 0, 255)
    return Image.fromarray(out, "L")


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
