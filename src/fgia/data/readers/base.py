"""What every reader shares: the error type, the registry, and parsers for the annotation files datasets ship."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgia.data.samples import BBox, FineGrainedDataset
from fgia.registry import Registry

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


class DatasetError(ValueError):
    """A dataset folder or annotation file that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Reader:
    """A supported layout: `detect(root)` returns the folder holding the dataset (or None); `read(folder)`.

    `fallback` layouts (the generic class-per-folder tree) are tried after every specific one.
    """

    name: str
    description: str
    detect: Callable[[Path], Path | None]
    read: Callable[..., FineGrainedDataset]
    fallback: bool = False


READERS: Registry[Reader] = Registry("dataset format")


def detection_order() -> list[Reader]:
    """Registered readers, specific layouts first and fallbacks last."""
    return sorted(READERS.values(), key=lambda r: r.fallback)


def register_reader(name: str, description: str, detect: Callable[[Path], Path | None], fallback: bool = False):
    """Register `read(folder, **options) -> FineGrainedDataset` under `name`."""

    def wrap(read: Callable[..., FineGrainedDataset]) -> Callable[..., FineGrainedDataset]:
        READERS.add(name, Reader(name, description, detect, read, fallback))
        return read

    return wrap


def candidate_dirs(root: Path, depth: int = 2, max_children: int = 4) -> list[Path]:
    """`root` and the wrapper folders datasets unpack into (`CUB_200_2011/`, `fgvc-aircraft-2013b/data/`).

    Only folders with few subfolders are descended into, so a tree of thousands of class folders costs nothing.
    """
    found, level = [root], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            subdirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            if len(subdirs) <= max_children:
                nxt.extend(subdirs)
        found.extend(nxt)
        level = nxt
    return found


def find_dir(root: Path, *markers: str) -> Path | None:
    """The first candidate folder under `root` that holds every relative path in `markers`."""
    if not root.is_dir():
        return None
    for d in candidate_dirs(root):
        if all((d / m).exists() for m in markers):
            return d
    return None


def unwrap(root: Path) -> Path:
    """Follow folders that hold nothing but one subfolder (`cub/CUB_200_2011/`)."""
    while root.is_dir():
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        root = entries[0]
    return root


def first_existing(*paths: Path) -> Path | None:
    """The first of `paths` that exists."""
    return next((p for p in paths if p.exists()), None)


def require(path: Path | None, what: str, where: Path | None = None) -> Path:
    """`path` when it exists, else a DatasetError naming the missing annotation file."""
    if path is None or not path.exists():
        raise DatasetError(f"missing annotation file: {what} (looked in {where or path})")
    return path


def read_rows(path: Path, min_fields: int, maxsplit: int = -1) -> list[list[str]]:
    """Whitespace-separated rows of a text annotation file (blank lines skipped), each with >= `min_fields`."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split(maxsplit=maxsplit) if maxsplit >= 0 else line.split()
            if not fields:
                continue
            if len(fields) < min_fields:
                raise DatasetError(f"{path}:{n}: expected {min_fields} fields, got {line.strip()!r}")
            rows.append(fields)
    return rows


def read_id_map(path: Path, maxsplit: int = 1) -> dict[str, str]:
    """`<id> <value...>` lines as a dict; the value keeps its spaces."""
    return {r[0]: r[1].strip() for r in read_rows(path, 2, maxsplit=maxsplit)}


def to_float(value: Any, path: Path, what: str) -> float:
    """`float(value)` with an error naming the file when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: {what} is not a number: {value!r}") from None


def matlab_box(x1: float, y1: float, x2: float, y2: float) -> BBox:
    """A 1-based inclusive pixel box (MATLAB devkits) as 0-based x1, y1 and exclusive x2, y2."""
    return (float(x1) - 1, float(y1) - 1, float(x2), float(y2))


def xywh_box(x: float, y: float, w: float, h: float) -> BBox:
    """An x, y, width, height box as x1, y1, x2, y2."""
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))


def load_mat(path: Path) -> dict[str, Any]:
    """A MATLAB .mat file as plain Python/NumPy values (structs become dicts)."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, squeeze_me=True, simplify_cells=True)
    except Exception as e:  # scipy raises many types for a bad file
        raise DatasetError(f"cannot read {path}: {e}") from None


def mat_key(mat: dict[str, Any], key: str, path: Path) -> Any:
    """`mat[key]` or a DatasetError naming the file."""
    if key not in mat:
        raise DatasetError(f"{path} has no {key!r} variable (found: {', '.join(k for k in mat if k[0] != '_')})")
    return mat[key]


def load_json(path: Path) -> Any:
    """A JSON file, with a one-line error when it is malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


def cat_to_name(*dirs: Path) -> dict[str, str]:
    """The `cat_to_name.json` class-name map (Flowers 102 re-releases) in the first of `dirs` that has one."""
    for d in dirs:
        path = d / "cat_to_name.json"
        if path.is_file():
            names = load_json(path)
            if not isinstance(names, dict):
                raise DatasetError(f"{path}: expected a JSON object mapping class id to name")
            return {str(k): str(v) for k, v in names.items()}
    return {}


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: "2" before "10", "sp2" before "sp10"."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text) if t)
