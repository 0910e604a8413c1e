"""FGVC-Aircraft 2013b: `data/images_{variant,family,manufacturer}_{train,val,test}.txt`, `images_box.txt`."""

from __future__ import annotations

from pathlib import Path

from fgia.data.readers.base import (
    DatasetError,
    find_dir,
    matlab_box,
    read_id_map,
    read_rows,
    register_reader,
    to_float,
)
from fgia.data.samples import FineGrainedDataset, Sample

LEVELS = ("variant", "family", "manufacturer")
_SPLITS = ("train", "val", "test")
_LIST_FILES = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


@register_reader(
    "fgvc_aircraft",
    "FGVC-Aircraft: data/images_variant_{train,val,test}.txt (+ family, manufacturer as hierarchy), "
    "images_box.txt, images/<id>.jpg",
    detect=lambda root: find_dir(root, "images_variant_train.txt", "images")
    or find_dir(root, "images_variant_test.txt", "images"),
)
def read_fgvc_aircraft(root: Path, level: str = "variant") -> FineGrainedDataset:
    """Read FGVC-Aircraft labelled at `level` (variant, family or manufacturer); the other levels go to hierarchy."""
    if level not in LEVELS:
        raise DatasetError(f"unknown FGVC-Aircraft level {level!r} (choose from {', '.join(LEVELS)})")
    labels: dict[str, dict[str, str]] = {lv: {} for lv in LEVELS}
    split_of: dict[str, str] = {}
    for split in _SPLITS:
        for lv in LEVELS:
            path = root / f"images_{lv}_{split}.txt"
            if path.exists():
                rows = read_id_map(path)
                labels[lv].update(rows)
                split_of.update(dict.fromkeys(rows, split))
    if not labels[level]:
        raise DatasetError(f"missing annotation file: images_{level}_<split>.txt (looked in {root})")

    classes = _class_order(root / _LIST_FILES[level], labels[level].values())
    index = {c: k for k, c in enumerate(classes)}
    boxes_path = root / "images_box.txt"
    boxes = (
        {r[0]: matlab_box(*(to_float(v, boxes_path, "box") for v in r[1:5])) for r in read_rows(boxes_path, 5)}
        if boxes_path.exists()
        else {}
    )
    samples = []
    for image_id, name in labels[level].items():
        if name not in index:
            raise DatasetError(f"{root / _LIST_FILES[level]}: {level} {name!r} is not listed")
        others = {lv: labels[lv][image_id] for lv in LEVELS if lv != level and image_id in labels[lv]}
        samples.append(
            Sample(
                path=root / "images" / f"{image_id}.jpg",
                label=index[name],
                split=split_of.get(image_id),
                bbox=boxes.get(image_id),
                hierarchy=others or None,
            )
        )
    return FineGrainedDataset(name="fgvc_aircraft", root=root, classes=classes, samples=samples)


def _class_order(list_file: Path, used) -> list[str]:
    """Class names in the order of the shipped list file, else sorted."""
    if list_file.exists():
        return [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(set(used))
