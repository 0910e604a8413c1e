"""Stanford Dogs: `lists/{train,test}_list.mat`, `Images/<wnid-breed>/*.jpg`, PASCAL-VOC XML boxes in `Annotation/`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from fgia.data.readers.base import (
    DatasetError,
    find_dir,
    load_mat,
    mat_key,
    register_reader,
    require,
    to_float,
)
from fgia.data.samples import BBox, FineGrainedDataset, Sample


def _lists_dir(root: Path) -> Path:
    return root / "lists" if (root / "lists").is_dir() else root


def _detect(root: Path) -> Path | None:
    return find_dir(root, "lists/train_list.mat", "Images") or find_dir(root, "train_list.mat", "Images")


@register_reader(
    "stanford_dogs",
    "Stanford Dogs: lists/train_list.mat + lists/test_list.mat, Images/<wnid-breed>/, Annotation/ XML boxes",
    detect=_detect,
)
def read_stanford_dogs(root: Path) -> FineGrainedDataset:
    """Read Stanford Dogs; class names are the breed part of the folder name ("n02085620-Chihuahua")."""
    lists = _lists_dir(root)
    entries: list[tuple[str, str, int, str]] = []  # file, annotation, 1-based label, split
    for split in ("train", "test"):
        path = lists / f"{split}_list.mat"
        if split == "train":
            require(path, "lists/train_list.mat", root)
        elif not path.exists():
            continue
        mat = load_mat(path)
        files, annos, labels = (mat_key(mat, k, path) for k in ("file_list", "annotation_list", "labels"))
        files, annos = [str(f) for f in _as_list(files)], [str(a) for a in _as_list(annos)]
        labels = [int(v) for v in _as_list(labels)]
        if not len(files) == len(annos) == len(labels):
            raise DatasetError(f"{path}: file_list, annotation_list and labels differ in length")
        entries.extend(zip(files, annos, labels, [split] * len(files), strict=True))

    folder_of = {label: f.replace("\\", "/").split("/")[0] for f, _, label, _ in entries}
    n_classes = max(folder_of)
    if sorted(folder_of) != list(range(1, n_classes + 1)):
        raise DatasetError(f"{lists}: labels are not 1..{n_classes} without gaps")
    classes = [folder_of[k].split("-", 1)[-1] for k in range(1, n_classes + 1)]
    annotations = root / "Annotation"
    samples = [
        Sample(
            path=root / "Images" / f,
            label=label - 1,
            split=split,
            bbox=_voc_box(annotations / a) if annotations.is_dir() else None,
        )
        for f, a, label, split in entries
    ]
    return FineGrainedDataset(name="stanford_dogs", root=root, classes=classes, samples=samples)


def _as_list(value) -> list:
    # squeeze_me turns a one-entry list into a scalar
    return [value] if isinstance(value, (str, int)) or getattr(value, "ndim", 1) == 0 else list(value)


def _voc_box(path: Path) -> BBox | None:
    """The box enclosing every object in a PASCAL-VOC XML file (several dogs of one breed share a label)."""
    if not path.exists():
        return None
    try:
        boxes = [
            tuple(to_float(obj.findtext(f"bndbox/{k}"), path, k) for k in ("xmin", "ymin", "xmax", "ymax"))
            for obj in ET.parse(path).getroot().iter("object")
        ]
    except ET.ParseError as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    if not boxes:
        return None
    x1, y1, x2, y2 = zip(*boxes, strict=True)
    return (min(x1), min(y1), max(x2), max(y2))
