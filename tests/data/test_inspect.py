"""inspect_dataset / inspect_path: counts, splits, annotations, broken files, rendering."""

from __future__ import annotations

import json

from fakes import write_image
from rich.console import Console

from fgia.data import inspect_dataset, inspect_path, read_dataset


def make_folder(root):
    for cls, n in (("ant", 3), ("bee", 1), ("cow", 2)):
        for i in range(n):
            write_image(root / "train" / cls / f"{i}.jpg")
    (root / "train" / "bee" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_inspect_counts_and_validate_finds_broken(tmp_path):
    root = make_folder(tmp_path / "ds")
    report = inspect_path(root)
    assert (report.format, report.n_images, report.n_classes) == ("folder", 7, 3)
    assert (report.per_class_min, report.per_class_median, report.per_class_max) == (2, 2.0, 3)
    assert report.class_counts == {"ant": 3, "bee": 2, "cow": 2}
    assert report.splits == {"train": 7} and not report.images_checked and report.broken == []

    checked = inspect_path(root, check_images=True, workers=2)
    assert checked.images_checked
    assert [(p.split("/")[-1], bool(reason)) for p, reason in checked.broken] == [("broken.jpg", True)]
    data = checked.to_dict()
    json.dumps(data)  # JSON-ready
    assert data["broken"][0][0].endswith("broken.jpg")

    console = Console(width=100, record=True)
    console.print(checked.render(max_classes=2))
    text = console.export_text()
    assert "broken images (1)" in text and "ant" in text and "cow" not in text


def test_inspect_reports_annotations_and_unlabelled(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,label,split,x1,y1,x2,y2,category,family\n"
        "a.jpg,x,train,0,0,4,4,birds,ducks\nb.jpg,,,,,,,birds,\n"
    )
    report = inspect_dataset(read_dataset(tmp_path / "m.csv"), fmt="manifest")
    assert (report.n_unlabelled, report.with_bbox, report.hierarchy_levels) == (1, 1, ["family"])
    assert report.categories == {"birds": 2} and report.splits == {"train": 1, "none": 1}
