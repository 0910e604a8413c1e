"""The fgia manifest CSV: `path,label[,split,x1,y1,x2,y2,category]`, paths relative to the CSV's folder."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from fgia.data.readers.base import DatasetError, natural_key, register_reader, to_float
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.runtime import atomic_write_text

COLUMNS = ("path", "label", "split", "x1", "y1", "x2", "y2", "category")
_BOX = ("x1", "y1", "x2", "y2")


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and path.is_file() and {"path", "label"} <= set(_header(path))


def _detect(root: Path) -> Path | None:
    if root.is_file():
        return root if _is_manifest(root) else None
    if not root.is_dir():
        return None
    if _is_manifest(root / "manifest.csv"):
        return root / "manifest.csv"
    found = [p for p in sorted(root.glob("*.csv")) if _is_manifest(p)]
    return found[0] if len(found) == 1 else None


@register_reader(
    "manifest",
    "fgia manifest CSV: path,label[,split,x1,y1,x2,y2,category] (a .csv file, or a folder with manifest.csv); "
    "empty label = unlabelled; extra columns become hierarchy levels",
    detect=_detect,
)
def read_manifest(path: Path) -> FineGrainedDataset:
    """Read a manifest CSV; class order is the natural sort of the label names."""
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"missing annotation file: manifest CSV {path}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        if not {"path", "label"} <= set(header):
            raise DatasetError(f"{path}: header must contain 'path' and 'label' (got {','.join(header)})")
        reader.fieldnames = header
        rows = list(enumerate(reader, 2))
    extra = [c for c in header if c not in COLUMNS]
    classes = sorted({(r["label"] or "").strip() for _, r in rows} - {""}, key=natural_key)
    index = {c: k for k, c in enumerate(classes)}
    samples = []
    for line, row in rows:
        if not (row.get("path") or "").strip():
            raise DatasetError(f"{path}:{line}: empty path")
        coords = [(row.get(k) or "").strip() for k in _BOX]
        if any(coords) and not all(coords):
            raise DatasetError(f"{path}:{line}: box needs all of x1,y1,x2,y2 or none")
        label = (row["label"] or "").strip()
        hierarchy = {k: row[k].strip() for k in extra if (row.get(k) or "").strip()}
        samples.append(
            Sample(
                path=Path(os.path.normpath(path.parent / row["path"].strip())),
                label=index[label] if label else -1,
                split=(row.get("split") or "").strip() or None,
                bbox=tuple(to_float(v, path, f"line {line} box") for v in coords) if all(coords) else None,
                category=(row.get("category") or "").strip() or None,
                hierarchy=hierarchy or None,
            )
        )
    return FineGrainedDataset(name=path.stem, root=path.parent, classes=classes, samples=samples)


def write_manifest(ds: FineGrainedDataset, path: str | os.PathLike) -> Path:
    """Write `ds` as a manifest CSV (atomically); image paths are stored relative to the CSV's folder."""
    path = Path(path)
    base = path.parent.absolute()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in ds.samples:
        box = [f"{v:g}" for v in s.bbox] if s.bbox else ["", "", "", ""]
        rel = os.path.relpath(Path(s.path).absolute(), base)
        label = ds.classes[s.label] if s.label >= 0 else ""
        writer.writerow([Path(rel).as_posix(), label, s.split or "", *box, s.category or ""])
    atomic_write_text(path, buf.getvalue())
    return path
