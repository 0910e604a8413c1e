"""The contract every registered dataset reader keeps (torchvision-style: one harness, fake files in each
dataset's real layout): the layout is detected, the dataset has the expected length, labels index its classes
(-1 = unlabelled), every path is an existing image file, and `category=` tags every sample.

A new reader is added to FAKES with a writer of a few fake files; `test_every_reader_has_a_fake` fails until it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fakes import save_mat, struct_array, write_image, write_lines
from test_readers import make_aircraft, make_cub

from fgia.data import detect_format, read_dataset, write_manifest
from fgia.data.readers.base import READERS
from fgia.data.samples import FineGrainedDataset, Sample


def _nabirds(root: Path) -> int:
    write_lines(root / "classes.txt", ["0 Birds", "1 Ducks", "2 Mallard", "3 Teal"])
    write_lines(root / "hierarchy.txt", ["1 0", "2 1", "3 1"])
    rows = [("a-1", "0002/x.jpg", 2), ("b-2", "0003/y.jpg", 3), ("c-3", "0003/z.jpg", 3)]
    write_lines(root / "images.txt", [f"{i} {f}" for i, f, _ in rows])
    write_lines(root / "image_class_labels.txt", [f"{i} {c}" for i, _, c in rows])
    write_lines(root / "train_test_split.txt", [f"{i} {n % 2}" for n, (i, _, _) in enumerate(rows)])
    for _, f, _ in rows:
        write_image(root / "images" / f)
    return len(rows)


def _cars(root: Path) -> int:
    save_mat(root / "devkit" / "cars_meta.mat", class_names=np.array([["Hummer SUV 2000", "Acura RL 2012"]], dtype=object))
    save_mat(root / "devkit" / "cars_train_annos.mat", annotations=struct_array([
        {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 9, "bbox_y2": 9, "class": c, "fname": f"0000{i}.jpg"}
        for i, c in ((1, 2), (2, 1), (3, 1))
    ]))
    for i in (1, 2, 3):
        write_image(root / "cars_train" / f"0000{i}.jpg")
    return 3


def _dogs(root: Path) -> int:
    files = ["n1-Chihuahua/n1_1.jpg", "n2-Japanese_spaniel/n2_2.jpg"]
    save_mat(root / "lists" / "train_list.mat", file_list=np.array([[f] for f in files], dtype=object),
             annotation_list=np.array([[f[:-4]] for f in files], dtype=object), labels=np.array([[1], [2]], np.uint8))
    for f in files:
        write_image(root / "Images" / f)
    return len(files)


def _flowers102(root: Path) -> int:
    save_mat(root / "imagelabels.mat", labels=np.array([[2, 1, 2]], dtype=np.uint8))
    save_mat(root / "setid.mat", trnid=np.array([[1, 2]]), valid=np.array([[3]]), tstid=np.array([[]]))
    for i in (1, 2, 3):
        write_image(root / "jpg" / f"image_{i:05d}.jpg")
    return 3


def _food101(root: Path) -> int:
    d = root / "food-101"
    write_lines(d / "meta" / "classes.txt", ["apple_pie", "ramen"])
    (d / "meta" / "train.json").write_text(json.dumps({"apple_pie": ["apple_pie/1"], "ramen": ["ramen/2"]}))
    (d / "meta" / "test.json").write_text(json.dumps({"ramen": ["ramen/3"]}))
    for f in ("apple_pie/1", "ramen/2", "ramen/3"):
        write_image(d / "images" / f"{f}.jpg")
    return 3


def _inat(root: Path) -> int:
    cats = [{"id": 1, "name": "Anas platyrhynchos", "supercategory": "Aves"},
            {"id": 2, "name": "Quercus robur", "supercategory": "Plantae"}]
    images = [{"id": 1, "file_name": "train/1/a.jpg"}, {"id": 2, "file_name": "train/2/b.jpg"}]
    (root / "train2018.json").write_text(json.dumps({"images": images, "categories": cats, "annotations": [
        {"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 2}]}))
    (root / "test2018.json").write_text(json.dumps({"images": [{"id": 9, "file_name": "test/c.jpg"}],
                                                     "categories": cats}))
    for f in ("train/1/a.jpg", "train/2/b.jpg", "test/c.jpg"):
        write_image(root / f)
    return 3


def _folder(root: Path) -> int:
    for cls, n in (("001.albatross", 2), ("002.gull", 1)):
        for i in range(n):
            write_image(root / "train" / cls / f"{i}.jpg")
    return 3


def _images(root: Path) -> int:
    write_image(root / "a.jpg")
    write_image(root / "trip" / "B.PNG")
    (root / "notes.txt").write_text("not an image")
    return 2


def _manifest(root: Path) -> int:
    samples = [Sample(write_image(root / "img" / f"{i}.jpg"), label) for i, label in enumerate((0, 1, -1))]
    write_manifest(FineGrainedDataset("terns", root, ["gull", "tern"], samples), root / "manifest.csv")
    return 3


def _cub(root: Path) -> int:
    make_cub(root)
    return 3


def _aircraft(root: Path) -> int:
    make_aircraft(root)
    return 3


FAKES: dict[str, Callable[[Path], int]] = {
    "cub200": _cub, "nabirds": _nabirds, "stanford_cars": _cars, "stanford_dogs": _dogs, "fgvc_aircraft": _aircraft,
    "flowers102": _flowers102, "food101": _food101, "inat": _inat, "folder": _folder, "images": _images,
    "manifest": _manifest,
}
"""Reader name -> writer of fake files in its layout under a root; returns the number of images written."""


def test_every_reader_has_a_fake():
    assert set(READERS) == set(FAKES)


@pytest.mark.parametrize("name", sorted(FAKES))
def test_reader_contract(name, tmp_path):
    expected = FAKES[name](tmp_path)
    root = tmp_path / "manifest.csv" if name == "manifest" else tmp_path
    assert detect_format(root)[0] == name
    ds = read_dataset(root, name)
    assert len(ds) == expected
    assert len(set(ds.classes)) == len(ds.classes) and all(isinstance(c, str) and c for c in ds.classes)
    assert all(-1 <= s.label < len(ds.classes) for s in ds)
    assert all(Path(s.path).is_file() for s in ds)
    tagged = read_dataset(root, name, category="birds")
    assert [s.path for s in tagged] == [s.path for s in ds] and {s.category for s in tagged} == {"birds"}
