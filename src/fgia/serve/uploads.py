"""Checking and decoding uploaded query images: type, size and pixel limits before the full decode."""

from __future__ import annotations

import io
import tempfile
import warnings

from PIL import Image

from fgia.data.images import ImageLoadError, load_image

# Declared content type -> the Pillow format the bytes must decode as.
ACCEPTED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def _has_image_signature(data: bytes) -> bool:
    """True when `data` starts like a JPEG, PNG or WebP file (so a decode failure means corrupt, not foreign)."""
    return data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


class UploadError(ValueError):
    """A rejected upload; `status_code` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


def decode_upload(data: bytes, content_type: str | None, max_pixels: int) -> Image.Image:
    """Decode an uploaded JPEG/PNG/WebP into an upright RGB image, or raise `UploadError` saying why not.

    Type and pixel count are checked from the header; the decode itself is `fgia.data.images.load_image`, so
    queries get exactly the colour/alpha/16-bit handling the database images got when they were indexed.
    """
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared not in ACCEPTED_TYPES:
        raise UploadError(415, f"unsupported content type {content_type!r}; send one of {', '.join(ACCEPTED_TYPES)}")
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    with warnings.catch_warnings():
        # Our own pixel limit below is the one that applies; Pillow's warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_TYPES.values()))
        except Image.DecompressionBombError as exc:
            raise UploadError(413, f"image has too many pixels (limit {max_pixels:,}): {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            if not _has_image_signature(data):
                raise UploadError(415, "the file is not a JPEG, PNG or WebP image (checked by content)") from None
            raise UploadError(400, f"corrupt or truncated image header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(413, f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
    with tempfile.NamedTemporaryFile(suffix=f".{image.format.lower()}") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_image(tmp.name, max_decode_pixels=max_pixels)
        except ImageLoadError as exc:
            raise UploadError(400, f"corrupt or truncated {image.format} image: {exc.reason}") from None
