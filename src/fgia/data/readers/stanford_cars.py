"""Stanford Cars: the devkit (.mat annotations), the all-in-one `cars_annos.mat`, and the CSV re-release."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fgia.data.readers.base import (
    IMAGE_EXTENSIONS,
    DatasetError,
    find_dir,
    first_existing,
    load_mat,
    mat_key,
    matlab_box,
    register_reader,
    require,
)
from fgia.data.samples import FineGrainedDataset, Sample


def _detect(root: Path) -> Path | None:
    return (
        find_dir(root, "devkit/cars_meta.mat")
        or find_dir(root, "cars_meta.mat", "cars_train_annos.mat")
        or find_dir(root, "cars_annos.mat")
        or find_dir(root, "names.csv", "anno_train.csv")
    )


@register_reader(
    "stanford_cars",
    "Stanford Cars: devkit/cars_meta.mat + devkit/cars_train_annos.mat (+ cars_test_annos_withlabels.mat) "
    "with cars_train/ cars_test/, or cars_annos.mat + car_ims/, or the CSV re-release "
    "(names.csv, anno_train.csv, anno_test.csv)",
    detect=_detect,
)
def read_stanford_cars(root: Path) -> FineGrainedDataset:
    """Read Stanford Cars in whichever of its shipped layouts `root` holds; boxes become 0-based."""
    if (root / "cars_annos.mat").exists():
        return _read_all_in_one(root)
    if (root / "names.csv").exists():
        return _read_csv_release(root)
    return _read_devkit(root)


def _records(annos: Any) -> list[dict]:
    # simplify_cells turns a 1-element struct array into a bare dict
    return [annos] if isinstance(annos, dict) else list(annos)


def _class_names(mat_path: Path) -> list[str]:
    names = mat_key(load_mat(mat_path), "class_names", mat_path)
    return [str(n) for n in ([names] if isinstance(names, str) else names)]


def _sample(rec: dict, path: Path, split: str, n_classes: int, source: Path) -> Sample:
    try:
        label = int(rec["class"]) - 1
        box = matlab_box(rec["bbox_x1"], rec["bbox_y1"], rec["bbox_x2"], rec["bbox_y2"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{source}: malformed annotation {rec!r} ({e})") from None
    if not 0 <= label < n_classes:
        raise DatasetError(f"{source}: class {label + 1} outside 1..{n_classes}")
    return Sample(path=path, label=label, split=split, bbox=box)


def _image_dir(root: Path, name: str) -> Path:
    # Kaggle mirrors unpack `cars_train.tgz` into cars_train/cars_train/
    nested = root / name / name
    return nested if nested.is_dir() else root / name


def _read_devkit(root: Path) -> FineGrainedDataset:
    devkit = root / "devkit" if (root / "devkit").is_dir() else root
    classes = _class_names(require(devkit / "cars_meta.mat", "devkit/cars_meta.mat", root))
    train_mat = require(devkit / "cars_train_annos.mat", "devkit/cars_train_annos.mat", root)
    sources = [("train", train_mat)]
    test_mat = first_existing(devkit / "cars_test_annos_withlabels.mat", root / "cars_test_annos_withlabels.mat")
    if test_mat is not None:
        sources.append(("test", test_mat))
    samples = []
    for split, mat_path in sources:
        images = _image_dir(root, f"cars_{split}")
        for rec in _records(mat_key(load_mat(mat_path), "annotations", mat_path)):
            samples.append(_sample(rec, images / str(rec.get("fname")), split, len(classes), mat_path))
    return FineGrainedDataset(name="stanford_cars", root=root, classes=classes, samples=samples)


def _read_all_in_one(root: Path) -> FineGrainedDataset:
    mat_path = root / "cars_annos.mat"
    mat = load_mat(mat_path)
    classes = [str(n) for n in mat_key(mat, "class_names", mat_path)]
    samples = [
        _sample(rec, root / str(rec.get("relative_im_path")), "test" if rec.get("test") else "train",
                len(classes), mat_path)
        for rec in _records(mat_key(mat, "annotations", mat_path))
    ]
    return FineGrainedDataset(name="stanford_cars", root=root, classes=classes, samples=samples)


def _read_csv_release(root: Path) -> FineGrainedDataset:
    """names.csv (one class per line) + anno_{train,test}.csv rows `fname,x1,y1,x2,y2,class` (1-based)."""
    with open(root / "names.csv", encoding="utf-8", newline="") as f:
        classes = [",".join(row).strip() for row in csv.reader(f) if row]
    samples = []
    for split in ("train", "test"):
        anno = root / f"anno_{split}.csv"
        if not anno.exists():
            continue
        files = _index_split_images(root, split)
        with open(anno, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row:
                    continue
                if len(row) < 6:
                    raise DatasetError(f"{anno}:{n}: expected fname,x1,y1,x2,y2,class, got {row!r}")
                fname = row[0].strip()
                rec = dict(zip(("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class"), row[1:6], strict=True))
                path = files.get(fname, root / split / fname)
                samples.append(_sample(rec, path, split, len(classes), anno))
    if not samples:
        raise DatasetError(f"missing annotation file: anno_train.csv or anno_test.csv (looked in {root})")
    return FineGrainedDataset(name="stanford_cars", root=root, classes=classes, samples=samples)


def _index_split_images(root: Path, split: str) -> dict[str, Path]:
    """Image file name -> path inside the split's folder (`car_data/car_data/train/<class>/00001.jpg`)."""
    for d in sorted(root.glob("**")):
        if d.name in (split, f"cars_{split}"):
            return {p.name: p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS}
    return {}
