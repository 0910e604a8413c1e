"""Food-101: `meta/{train,test}.json` ({class: ["class/id", ...]}), `meta/classes.txt`, `images/<class>/<id>.jpg`."""

from __future__ import annotations

from pathlib import Path

from fgia.data.readers.base import DatasetError, find_dir, load_json, register_reader
from fgia.data.samples import FineGrainedDataset, Sample


@register_reader(
    "food101",
    "Food-101: meta/train.json + meta/test.json (class -> image ids), meta/classes.txt, images/<class>/",
    detect=lambda root: find_dir(root, "meta/train.json", "images") or find_dir(root, "meta/test.json", "images"),
)
def read_food101(root: Path) -> FineGrainedDataset:
    """Read Food-101; class order follows meta/classes.txt when present, else sorted names."""
    meta = root / "meta"
    per_split = {s: load_json(meta / f"{s}.json") for s in ("train", "test") if (meta / f"{s}.json").exists()}
    if not per_split:
        raise DatasetError(f"missing annotation file: meta/train.json or meta/test.json (looked in {root})")
    for split, entries in per_split.items():
        if not isinstance(entries, dict):
            raise DatasetError(f"{meta / f'{split}.json'}: expected an object mapping class to image ids")
    classes_file = meta / "classes.txt"
    classes = (
        [c.strip() for c in classes_file.read_text(encoding="utf-8").splitlines() if c.strip()]
        if classes_file.exists()
        else sorted({c for entries in per_split.values() for c in entries})
    )
    index = {c: k for k, c in enumerate(classes)}
    samples = []
    for split, entries in per_split.items():
        for name, ids in entries.items():
            if name not in index:
                raise DatasetError(f"{meta / f'{split}.json'}: class {name!r} not in meta/classes.txt")
            samples.extend(Sample(path=root / "images" / f"{i}.jpg", label=index[name], split=split) for i in ids)
    return FineGrainedDataset(name="food101", root=root, classes=classes, samples=samples)
