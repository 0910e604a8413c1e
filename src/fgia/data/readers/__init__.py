"""Dataset readers for the layouts fine-grained datasets ship in, with auto-detection.

    ds = read_dataset("data/CUB_200_2011")            # format detected
    ds = read_dataset("data/aircraft", "fgvc_aircraft", level="family", category="aircraft")
"""

from __future__ import annotations

import inspect
import os
from dataclasses import replace
from pathlib import Path

# Importing the format modules registers them.
from fgia.data.readers import (  # noqa: F401
    aircraft,
    cub,
    flowers102,
    folder,
    food101,
    inat,
    manifest,
    stanford_cars,
    stanford_dogs,
    unlabelled,
)
from fgia.data.readers.base import READERS, DatasetError, detection_order, unwrap
from fgia.data.readers.manifest import write_manifest
from fgia.data.samples import FineGrainedDataset

__all__ = ["DatasetError", "detect_format", "list_formats", "read_dataset", "write_manifest"]


def list_formats() -> list[tuple[str, str]]:
    """(name, description) of every supported layout, in detection order."""
    return [(r.name, r.description) for r in detection_order()]


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DatasetError(f"no such file or folder: {path}")
    if path.is_dir() and not any(path.iterdir()):
        raise DatasetError(f"empty folder: {path}")
    return path


def detect_format(root: str | os.PathLike) -> tuple[str, Path]:
    """The layout name and the folder (or manifest file) it was found in; DatasetError when none matches."""
    path = _check_root(root)
    for reader in detection_order():
        try:
            found = reader.detect(path)
        except OSError as e:
            raise DatasetError(f"cannot read {path}: {e}") from None
        if found is not None:
            return reader.name, found
    raise DatasetError(f"unknown dataset layout in {path}: {_found(path)}. {ACCEPTED}")


ACCEPTED = ("A folder tree of images (jpg/jpeg/png/webp) is a database (unlabelled; `fgia index`); to train, put "
            "images in <class>/ folders or give a manifest CSV (path,label[,split,...,category]); or use a shipped "
            "layout (`fgia datasets list`)")
"""What each accepted layout needs, for errors about layouts."""


def _found(path: Path, limit: int = 10000) -> str:
    """What a file or folder holds, in a few words ("a .txt file"; "12 files (.txt 10, .json 2), 3 folders, no
    images"), looking at the first `limit` entries of a folder tree."""
    if path.is_file():
        return f"a {path.suffix or 'suffix-less'} file that is not a manifest CSV with a path,label header"
    suffixes: dict[str, int] = {}
    folders = 0
    for n, entry in enumerate(path.rglob("*")):
        if n >= limit:
            break
        if entry.is_dir():
            folders += 1
        else:
            suffix = entry.suffix.lower() or "no suffix"
            suffixes[suffix] = suffixes.get(suffix, 0) + 1
    kinds = ", ".join(f"{s} {k}" for s, k in sorted(suffixes.items(), key=lambda kv: -kv[1])[:5])
    files = sum(suffixes.values())
    return f"{files} file(s){f' ({kinds})' if kinds else ''}, {folders} folder(s), no jpg/jpeg/png/webp images"


def read_dataset(
    root: str | os.PathLike, fmt: str = "auto", category: str | None = None, **options
) -> FineGrainedDataset:
    """Read the dataset at `root` (`fmt` = a name from `list_formats()` or "auto").

    `category` tags every sample with a meta-category ("birds", "cars", ...); `options` go to the reader
    (e.g. `level="family"` for fgvc_aircraft).
    """
    if fmt == "auto":
        fmt, found = detect_format(root)
    else:
        if fmt not in READERS:
            raise DatasetError(f"unknown dataset format {fmt!r} (supported: {', '.join(READERS)})")
        path = _check_root(root)
        # a layout that is not detected is still read, so the error names the missing annotation file
        found = READERS.get(fmt).detect(path) or unwrap(path)
    read = READERS.get(fmt).read
    try:
        inspect.signature(read).bind(found, **options)
    except TypeError as e:
        raise DatasetError(f"bad option for the {fmt} reader: {e}") from None
    try:
        ds = read(found, **options)
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {fmt} dataset at {found}: {e}") from None
    if not ds.samples:
        raise DatasetError(f"no images listed in the {fmt} dataset at {found}")
    if category is not None:
        ds.samples = [replace(s, category=category) for s in ds.samples]
    return ds
