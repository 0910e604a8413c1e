"""iNaturalist-style COCO JSON: `{images: [{id, file_name}], annotations: [{image_id, category_id}], categories}`."""

from __future__ import annotations

from pathlib import Path

from fgia.data.readers.base import (
    DatasetError,
    candidate_dirs,
    load_json,
    register_reader,
)
from fgia.data.samples import FineGrainedDataset, Sample

TAXONOMY = ("supercategory", "kingdom", "phylum", "class", "order", "family", "genus")
_SPLIT_PREFIXES = (("train", "train"), ("val", "val"), ("public_test", "test"), ("test", "test"))


def _annotation_files(folder: Path) -> list[Path]:
    """JSON files whose opening looks like a COCO/iNat image list (full parsing waits for `read`)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
        if '"images"' in head and '"file_name"' in head:
            found.append(path)
    return found


def _detect(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    return next((d for d in candidate_dirs(root, depth=1) if _annotation_files(d)), None)


def _split_of(path: Path) -> str:
    stem = path.stem.lower()
    return next((split for prefix, split in _SPLIT_PREFIXES if stem.startswith(prefix)), stem)


@register_reader(
    "inat",
    "iNaturalist-style JSON (train*.json, val*.json, test*.json: images/annotations/categories, "
    "file_name relative to the JSON); taxonomy as hierarchy, supercategory as category",
    detect=_detect,
)
def read_inat(root: Path) -> FineGrainedDataset:
    """Read every iNat/COCO-style JSON in `root`; images without an annotation are unlabelled (-1)."""
    files = _annotation_files(root)
    if not files:
        raise DatasetError(f"missing annotation file: no iNat-style *.json with an image list in {root}")
    categories: dict[int, dict] = {}
    loaded = []
    for path in files:
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"{path}: expected a JSON object with an 'images' list")
        for cat in data.get("categories", []):
            categories.setdefault(int(cat["id"]), cat)
        loaded.append((path, data))
    ids = sorted(categories)
    index = {cid: k for k, cid in enumerate(ids)}
    hierarchy = {cid: {k: str(c[k]) for k in TAXONOMY if c.get(k)} or None for cid, c in categories.items()}

    samples = []
    for path, data in loaded:
        label_of = {a["image_id"]: int(a["category_id"]) for a in data.get("annotations", [])}
        unknown = sorted(set(label_of.values()) - set(index))
        if unknown:
            raise DatasetError(f"{path}: annotation uses category id {unknown[0]} missing from 'categories'")
        for image in data["images"]:
            cid = label_of.get(image.get("id"))
            if "file_name" not in image:
                raise DatasetError(f"{path}: image entry without file_name: {image!r}")
            samples.append(
                Sample(
                    path=path.parent / image["file_name"],
                    label=index[cid] if cid is not None else -1,
                    split=_split_of(path),
                    hierarchy=hierarchy[cid] if cid is not None else None,
                    category=categories[cid].get("supercategory") if cid is not None else None,
                )
            )
    classes = [str(categories[cid].get("name", cid)) for cid in ids]
    return FineGrainedDataset(name="inat", root=root, classes=classes, samples=samples)
