"""Official, zero-shot and OSFGIR splits on small hand-built datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgia.data import (
    DatasetError,
    FineGrainedDataset,
    OsfgirSplit,
    Sample,
    build_osfgir_split,
    official_split,
    stratified_split,
    zero_shot_split,
)


def make_ds(name: str, n_classes: int, per_class: int, root: Path = Path("/data")) -> FineGrainedDataset:
    samples = [
        Sample(root / name / f"c{c}" / f"{i}.jpg", label=c, split="train" if i % 2 else "test")
        for c in range(n_classes)
        for i in range(per_class)
    ]
    return FineGrainedDataset(name, root / name, [f"{name}_{c:03d}" for c in range(n_classes)], samples)


def test_official_split_uses_shipped_splits():
    ds = make_ds("cub", 3, 4)
    ds.samples.append(Sample(Path("/data/v.jpg"), label=0, split="val"))
    train, test = official_split(ds)
    assert len(train) == 7 and len(test) == 6
    assert {s.split for s in train} == {"train", "val"} and train.classes == ds.classes
    no_test = ds.filter(lambda s: s.split != "test")
    with pytest.raises(DatasetError, match="no official train/test split"):
        official_split(no_test)


def test_zero_shot_split_halves_classes_in_order():
    ds = make_ds("cars", 5, 2)
    ds.samples = [s for s in ds.samples if s.label != 1]  # a class without images does not count
    train, test = zero_shot_split(ds)
    assert train.classes == ["cars_000", "cars_002"]
    assert test.classes == ["cars_003", "cars_004"]
    assert sorted(set(test.labels)) == [0, 1] and len(train) + len(test) == len(ds)
    assert {s.path.parent.name for s in test} == {"c3", "c4"}


def test_stratified_split_halves_each_class_and_is_seeded():
    ds = make_ds("cars", 3, 5)
    ds.samples = [s for s in ds.samples if not (s.label == 2 and s.path.stem != "0")]  # class 2: one image
    ds.samples.append(Sample(Path("/data/unlabelled.jpg"), label=-1))
    train, test = stratified_split(ds, 0.5, seed=0)
    per_class = {c: (train.labels.count(c), test.labels.count(c)) for c in range(3)}
    assert per_class == {0: (3, 2), 1: (3, 2), 2: (1, 0)}  # floor(0.5 n) tested; the unlabelled image is dropped
    assert not {s.path for s in train} & {s.path for s in test} and train.classes == test.classes == ds.classes
    again = stratified_split(ds, 0.5, seed=0)[1]
    other = stratified_split(ds, 0.5, seed=1)[1]
    assert [s.path for s in again] == [s.path for s in test]
    assert {s.path for s in other} != {s.path for s in test}
    with pytest.raises(DatasetError, match="test fraction"):
        stratified_split(ds, 1.0)


def test_osfgir_split_disjoint_species_queries_removed_distractors():
    birds, cars = make_ds("birds", 6, 5), make_ds("cars", 4, 3)
    cars.samples.append(Sample(Path("/data/cars/unlabelled.jpg"), label=-1))
    noise = [Sample(Path(f"/noise/{i}.jpg"), 0) for i in range(3)]
    distractors = FineGrainedDataset("noise", Path("/noise"), [], noise)
    split = build_osfgir_split({"birds": birds, "cars": cars}, queries_per_class=2, distractors=distractors, seed=3)

    aux_species = set(split.auxiliary.classes)
    db_species = set(split.database.classes)
    assert len(aux_species) == 3 + 2 and len(db_species) == 3 + 2
    assert not aux_species & db_species
    assert all(c.startswith(("birds/", "cars/")) for c in aux_species | db_species)
    assert split.queries.classes == split.database.classes
    # no image is in two parts; every source image is somewhere
    parts = [split.auxiliary, split.database, split.queries]
    paths = [s.path for p in parts for s in p]
    assert len(paths) == len(set(paths)) == 30 + 12 + 1 + 3
    # queries left the database, and each query class keeps images in the database
    assert not {s.path for s in split.queries} & {s.path for s in split.database}
    db_labels = {s.label for s in split.database if s.label >= 0}
    assert {s.label for s in split.queries} <= db_labels
    per_class = {c: sum(s.label == c for s in split.queries) for c in range(len(split.database.classes))}
    assert set(per_class.values()) == {2}
    # labels name the right species, categories are carried, distractors are unlabelled
    for part in parts:
        for s in part:
            if s.label >= 0:
                category, name = part.classes[s.label].split("/")
                assert s.category == category and s.path.parent.name == f"c{int(name.split('_')[1])}"
    unlabelled = [s for s in split.database if s.label < 0]
    assert len(unlabelled) == 4 and {s.category for s in unlabelled} == {"cars", "distractors"}


def test_osfgir_split_is_seeded_and_categories_independent():
    birds, cars = make_ds("birds", 10, 4), make_ds("cars", 10, 4)
    a = build_osfgir_split({"birds": birds}, seed=1)
    b = build_osfgir_split({"birds": birds, "cars": cars}, seed=1)
    c = build_osfgir_split({"birds": birds}, seed=2)
    birds_aux = [x for x in b.auxiliary.classes if x.startswith("birds/")]
    assert a.auxiliary.classes == birds_aux  # adding a category leaves birds' draw alone
    assert a.auxiliary.classes != c.auxiliary.classes
    capped = build_osfgir_split({"birds": birds}, max_images_per_class=2, query_fraction=0.4)
    assert len(capped.auxiliary) == 5 * 2 and len(capped.queries) == 5 and len(capped.database) == 5


def test_osfgir_split_rejects_bad_settings():
    with pytest.raises(DatasetError, match="at least 2 species"):
        build_osfgir_split({"birds": make_ds("birds", 1, 3)})
    with pytest.raises(DatasetError, match="aux_fraction"):
        build_osfgir_split({"birds": make_ds("birds", 4, 3)}, aux_fraction=1.0)
    with pytest.raises(DatasetError, match="at least one"):
        build_osfgir_split({})


def test_osfgir_split_save_load_roundtrip(tmp_path):
    ds = make_ds("birds", 6, 3, root=tmp_path / "imgs")
    ds.samples[0] = Sample(ds.samples[0].path, 0, "test", bbox=(1.0, 2.0, 3.5, 4.0))
    split = build_osfgir_split({"birds": ds, "cars": make_ds("cars", 4, 2, root=tmp_path / "imgs")}, seed=5)
    split.save(tmp_path / "split")
    loaded = OsfgirSplit.load(tmp_path / "split")
    assert loaded.categories == ["birds", "cars"] and loaded.seed == 5 and loaded.config == split.config
    for part in ("auxiliary", "database", "queries"):
        before, after = getattr(split, part), getattr(loaded, part)
        assert after.classes == before.classes
        assert [(s.path, s.label, s.category, s.bbox) for s in after] == [
            (s.path, s.label, s.category, s.bbox) for s in before
        ]
    with pytest.raises(DatasetError, match="no split.json"):
        OsfgirSplit.load(tmp_path)
