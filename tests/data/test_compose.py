"""Auxiliary sets: one labelled set becomes one meta-category, several compose into meta-categories."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from PIL import Image

from fgia.config import from_dict
from fgia.data import (
    DatasetError,
    DatasetSpec,
    labelled_set,
    merge_categories,
    parse_dataset_spec,
    read_composite,
    read_dataset,
)
from fgia.data.protocols import database_split


def _class_folders(root, classes, per_class=2):
    for name in classes:
        for k in range(per_class):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(root / name / f"{k}.jpg")
    return root


def test_specs_parse_from_the_command_line_and_from_yaml():
    assert parse_dataset_spec("birds = data/cub") == DatasetSpec("birds", "data/cub")
    for bad in ("birds", "=data", "birds=", "a/b=x"):
        with pytest.raises(DatasetError):
            parse_dataset_spec(bad)

    @dataclass
    class Run:
        datasets: list[DatasetSpec] = field(default_factory=list)

    run = from_dict(Run, {"datasets": [{"category": "cars", "path": "cars", "format": "folder"}]})
    assert run.datasets == [DatasetSpec("cars", "cars", "folder")]


def test_composed_sets_become_meta_categories_with_unique_class_names(tmp_path):
    _class_folders(tmp_path / "b", ["sparrow", "wren"], per_class=3)
    _class_folders(tmp_path / "c", ["audi", "bmw", "fiat"])
    parts = read_composite([DatasetSpec("birds", "b"), DatasetSpec("cars", tmp_path / "c")], root=tmp_path)
    assert list(parts) == ["birds", "cars"]
    merged = merge_categories(parts)
    assert merged.classes == ["birds/sparrow", "birds/wren", "cars/audi", "cars/bmw", "cars/fiat"]
    assert len(merged) == 6 + 6
    for s in merged.samples:  # each image keeps its species under the new numbering, tagged with its category
        assert merged.classes[s.label] == f"{s.category}/{s.path.parent.name}"
    with pytest.raises(DatasetError, match="'birds' is given twice"):
        read_composite([DatasetSpec("birds", "b"), DatasetSpec("birds", "c")], root=tmp_path)


def test_a_set_without_meta_categories_is_one_category(tmp_path):
    ds = read_dataset(_class_folders(tmp_path / "my-birds", ["a", "b", "c"]))
    assert labelled_set(ds).samples[0].category == "my-birds"  # the folder's name
    assert {s.category for s in labelled_set(ds, "birds").samples} == {"birds"}
    tagged = read_dataset(tmp_path / "my-birds", category="birds")
    assert labelled_set(tagged, "ignored").samples[0].category == "birds"  # a category it has is kept


def test_an_unlabelled_set_cannot_train_and_says_why(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "y.jpg")
    with pytest.raises(DatasetError, match=r"2 image\(s\) and no labels.*is a database.*<class>/ folders"):
        labelled_set(read_dataset(tmp_path))


def test_a_users_database_is_searched_with_every_labelled_species_training(tmp_path):
    aux = read_composite([DatasetSpec("birds", _class_folders(tmp_path / "aux", ["a", "b", "c"]))])
    for k in range(10):
        Image.new("RGB", (8, 8)).save(tmp_path / f"photo{k}.jpg")
    database = read_dataset(tmp_path, "images")  # the aux images are under tmp_path too: 16 images
    split = database_split(aux, database, query_fraction=0.25, seed=0)
    assert len(split.auxiliary) == 6 and split.auxiliary.classes == ["birds/a", "birds/b", "birds/c"]
    assert len(split.queries) == 4 and len(split.database) == 12
    assert {s.path for s in split.queries.samples}.isdisjoint(s.path for s in split.database.samples)
    again = database_split(aux, database, query_fraction=0.25, seed=0)
    assert [s.path for s in again.queries.samples] == [s.path for s in split.queries.samples]
