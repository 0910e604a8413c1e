"""Checking and decoding uploaded query images: type, size and pixel limits before the full decode."""

from __future__ import annotations

import ctypes
import io
import re
import tempfile
import warnings

from PIL import Image

from fgia.data.images import (
    ORIGINAL_SIZE_KEY,
    ImageLoadError,
    ImageTooLargeError,
    load_image,
)

# Declared content type -> the Pillow format the bytes must decode as.
ACCEPTED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
# Uploads of at least this many pixels hand the decode's freed memory back to the OS (`return_freed_memory`).
TRIM_AFTER_PIXELS = 4_000_000


def return_freed_memory() -> bool:
    """Give the C heap's free memory back to the OS (glibc `malloc_trim`); False where the C library is not glibc.

    glibc keeps freed buffers below its (adaptive) mmap threshold in the decoding thread's arena, so without this
    the server kept ~190 MB more after six 6300 x 6300 uploads, growing with further ones. Trimming after large
    decodes only, instead of lowering the mmap threshold for the whole process, leaves the network's activations
    on the heap: mapping each one afresh made served queries ~1.4x slower."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def _has_image_signature(data: bytes) -> bool:
    """True when `data` starts like a JPEG, PNG or WebP file (so a decode failure means corrupt, not foreign)."""
    return data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _reason(exc: object) -> str:
    """An exception's message without object reprs such as `<_io.BytesIO object at 0x7f...>`."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or type(exc).__name__


class UploadError(ValueError):
    """A rejected upload; `status_code` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


def decode_upload(data: bytes, content_type: str | None, max_pixels: int, max_decoded_bytes: int,
                  max_side: int | None = None) -> Image.Image:
    """Decode an uploaded JPEG/PNG/WebP into an upright RGB image, or raise `UploadError` saying why not.

    Type and pixel count are checked from the header, the decoded bytes (width x height x bytes per pixel)
    before decoding; the decode itself is `fgia.data.images.load_image`, so queries get exactly the
    colour/alpha/16-bit handling (and the size reduction) the database images got when they were indexed. With
    `max_side`, the result is reduced to at most that longest side (it keeps its original size in its info, so
    region boxes still come out in the upload's pixels).
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
            raise UploadError(413, f"image has too many pixels (limit {max_pixels:,}): {_reason(exc)}") from None
        except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            if not _has_image_signature(data):
                raise UploadError(415, "the file is not a JPEG, PNG or WebP image (checked by content)") from None
            raise UploadError(400, f"corrupt or truncated image header: {_reason(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(413, f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
    with tempfile.NamedTemporaryFile(suffix=f".{image.format.lower()}") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            decoded = load_image(tmp.name, max_decode_bytes=max_decoded_bytes)
        except ImageTooLargeError as exc:
            raise UploadError(413, f"image {exc.reason.replace('decompression-bomb limit', 'limit')}") from None
        except ImageLoadError as exc:
            raise UploadError(400, f"corrupt or truncated {image.format} image: {_reason(exc.reason)}") from None
    if max_side is not None and max(decoded.size) > max_side:
        original = decoded.info.get(ORIGINAL_SIZE_KEY, decoded.size)
        decoded.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        decoded.info[ORIGINAL_SIZE_KEY] = original
    if width * height >= TRIM_AFTER_PIXELS:
        return_freed_memory()
    return decoded
