"""Any folder tree of images as an unlabelled database: the user's own photos, no labels and no annotation files.

Tried after every labelled layout, so a folder with `<class>/` subfolders or annotation tables keeps its labels.
Files are found recursively; `.jpg .jpeg .png .webp` (any case) are images, hidden files and folders (a leading
dot) and other files are skipped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fgia.data.readers.base import DatasetError, natural_key, register_reader
from fgia.data.samples import FineGrainedDataset, Sample

log = logging.getLogger(__name__)

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
"""The suffixes (compared lower-cased) of the images an unlabelled folder is read for."""


@dataclass
class ImageScan:
    """What a walk through a folder tree found: the images, and how many hidden entries and other files it
    skipped."""

    images: list[Path]
    hidden: int = 0
    other: int = 0

    def skipped(self) -> str:
        """"3 hidden, 2 non-image" (empty when nothing was skipped)."""
        parts = [f"{n} {what}" for n, what in ((self.hidden, "hidden"), (self.other, "non-image")) if n]
        return ", ".join(parts)


def _walk(root: Path, scan: ImageScan) -> Iterator[Path]:
    """Images under `root` (folder by folder, each in natural order), counting what is skipped into `scan`."""
    for folder, dirs, files in os.walk(root):
        hidden_dirs = [d for d in dirs if d.startswith(".")]
        scan.hidden += len(hidden_dirs)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        for name in sorted(files, key=natural_key):
            if name.startswith("."):
                scan.hidden += 1
            elif Path(name).suffix.lower() in PHOTO_EXTENSIONS:
                yield Path(folder) / name
            else:
                scan.other += 1


def scan_images(root: str | os.PathLike) -> ImageScan:
    """Every image in the folder tree `root` (see the module docstring), in natural path order."""
    scan = ImageScan(images=[])
    scan.images = list(_walk(Path(root), scan))
    return scan


def _detect(root: Path) -> Path | None:
    return root if root.is_dir() and next(_walk(root, ImageScan([])), None) is not None else None


@register_reader(
    "images",
    "any folder tree of images (jpg/jpeg/png/webp, recursive): an unlabelled database; hidden files and "
    "non-images are skipped and counted",
    detect=_detect,
    fallback=True,
)
def read_images(root: Path) -> FineGrainedDataset:
    """Every image under `root`, unlabelled (label -1); the skipped files are counted in a warning."""
    scan = scan_images(root)
    if not scan.images:
        raise DatasetError(f"no images (jpg/jpeg/png/webp) under {root}" +
                           (f"; skipped {scan.skipped()} file(s)" if scan.skipped() else ""))
    if scan.skipped():
        log.warning("%s: %d image(s); skipped %s file(s)", root, len(scan.images), scan.skipped())
    return FineGrainedDataset(name=root.name or "images", root=root, classes=[],
                              samples=[Sample(path=p, label=-1) for p in scan.images])
