"""A plain class-per-folder tree (`<class>/*.jpg`), optionally under split folders (`train/<class>/*.jpg`)."""

from __future__ import annotations

import logging
from pathlib import Path

from fgia.data.readers.base import (
    IMAGE_EXTENSIONS,
    DatasetError,
    cat_to_name,
    natural_key,
    register_reader,
)
from fgia.data.samples import FineGrainedDataset, Sample

log = logging.getLogger(__name__)

SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test", "trainval"})
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}


def _subdirs(d: Path) -> list[Path]:
    dirs = (p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(dirs, key=lambda p: natural_key(p.name))


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _has_direct_images(d: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir() if p.is_file())


def _class_root(root: Path) -> tuple[Path, list[Path]]:
    """Descend through single-child wrapper folders; return the folder holding classes (or splits) and its children."""
    d = root
    while True:
        children = _subdirs(d)
        if len(children) == 1 and children[0].name.lower() not in SPLIT_NAMES and not _has_direct_images(d):
            d = children[0]
            continue
        return d, children


def _detect(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    d, children = _class_root(root)
    if _has_direct_images(d):
        return None  # loose images beside the subfolders: a photo collection, not one folder per class
    if children and all(c.name.lower() in SPLIT_NAMES for c in children):
        children = [g for c in children for g in _subdirs(c)]
    return root if any(_has_direct_images(c) for c in children[:50]) else None


@register_reader(
    "folder",
    "class-per-folder tree: <class>/*.jpg, optionally under train/ val/ test/; class names from a "
    "cat_to_name.json in or beside the root",
    detect=_detect,
    fallback=True,
)
def read_folder(root: Path) -> FineGrainedDataset:
    """Read a class-per-folder tree; folders with no image are skipped with a warning."""
    base, children = _class_root(root)
    if children and all(c.name.lower() in SPLIT_NAMES for c in children):
        groups = [(_SPLIT_ALIASES.get(c.name.lower(), c.name.lower()), _subdirs(c)) for c in children]
    else:
        groups = [(None, children)]
    names = sorted({c.name for _, dirs in groups for c in dirs}, key=natural_key)
    files = {(split, c.name): _images(c) for split, dirs in groups for c in dirs}
    empty = [n for n in names if not any(f for (_, name), f in files.items() if name == n)]
    if empty:
        log.warning("%s: skipping %d class folder(s) without images: %s", root, len(empty), ", ".join(empty[:5]))
    names = [n for n in names if n not in empty]
    if not names:
        raise DatasetError(f"no class folder with images under {root}")
    index = {n: k for k, n in enumerate(names)}
    samples = [
        Sample(path=p, label=index[name], split=split)
        for (split, name), paths in files.items()
        if name in index
        for p in paths
    ]
    mapping = cat_to_name(*_ancestors(base, root))
    return FineGrainedDataset(name="folder", root=root, classes=[mapping.get(n, n) for n in names], samples=samples)


def _ancestors(base: Path, root: Path) -> list[Path]:
    """`base` up to `root`, then the folder beside `root` (where cat_to_name.json usually sits)."""
    chain = [base, *[p for p in base.parents if p.is_relative_to(root)]]
    return [*chain, root.parent]
