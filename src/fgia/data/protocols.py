"""Evaluation protocols: the official classification split, the zero-shot retrieval split, and OSFGIR splits."""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fgia.config import from_dict, to_dict
from fgia.data.compose import DatasetSpec, merge_categories, read_composite
from fgia.data.readers import DatasetError, write_manifest
from fgia.data.readers.manifest import read_manifest
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.runtime import atomic_write_text

TRAIN_SPLITS = ("train", "val", "trainval")


def official_split(ds: FineGrainedDataset) -> tuple[FineGrainedDataset, FineGrainedDataset]:
    """(train, test) by the split the dataset ships: train/val/trainval images train, test images test."""
    train = ds.filter(lambda s: s.split in TRAIN_SPLITS, name=f"{ds.name}:train")
    test = ds.filter(lambda s: s.split == "test", name=f"{ds.name}:test")
    if not train.samples or not test.samples:
        found = sorted({str(s.split) for s in ds.samples})
        raise DatasetError(f"{ds.name} has no official train/test split (splits found: {', '.join(found)})")
    return train, test


def stratified_split(ds: FineGrainedDataset, test_fraction: float = 0.5,
                     seed: int = 0) -> tuple[FineGrainedDataset, FineGrainedDataset]:
    """(train, test) by image, class by class: a seeded floor(`test_fraction` x n) of each class's n labelled images
    is tested, the rest trains (a class with one image only trains). Both keep the dataset's class list; for a
    dataset whose test half is not shipped (Stanford Cars' train folder alone, a partial Flowers 102)."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"the test fraction must be in (0, 1), got {test_fraction}")
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(ds.samples):
        if s.label >= 0:
            by_class.setdefault(s.label, []).append(i)
    if not by_class:
        raise DatasetError(f"{ds.name}: a stratified split needs labelled images, found none")
    rng = np.random.default_rng(seed)
    tested: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        tested.update(np.asarray(members)[rng.permutation(len(members))[: int(test_fraction * len(members))]].tolist())
    labelled = {i for members in by_class.values() for i in members}
    train = [s for i, s in enumerate(ds.samples) if i in labelled and i not in tested]
    test = [s for i, s in enumerate(ds.samples) if i in tested]
    return replace(ds, name=f"{ds.name}:train", samples=train), replace(ds, name=f"{ds.name}:test", samples=test)


def zero_shot_split(ds: FineGrainedDataset) -> tuple[FineGrainedDataset, FineGrainedDataset]:
    """(train, test) by class: the first half of the classes (class order) trains, the second half is retrieved.

    Only classes with images count (CUB 100/100, Cars 98/98); each half's labels are renumbered from 0.
    """
    used = sorted({s.label for s in ds.samples if s.label >= 0})
    if len(used) < 2:
        raise DatasetError(f"{ds.name}: a zero-shot split needs at least 2 labelled classes, found {len(used)}")
    half = len(used) // 2
    return ds.with_classes(used[:half], name=f"{ds.name}:zs-train"), ds.with_classes(
        used[half:], name=f"{ds.name}:zs-test"
    )


def hold_out_classes(
    ds: FineGrainedDataset, fraction: float, seed: int = 0
) -> tuple[FineGrainedDataset, FineGrainedDataset]:
    """(kept, held out) by class: per meta-category a seeded `fraction` of its classes (at least 2, and at least
    one class kept) is held out, e.g. to choose a recipe on species the models never saw. Labels keep their
    numbering in both halves' own class lists (each renumbered from 0)."""
    if not 0 < fraction < 1:
        raise DatasetError(f"the held-out fraction must be in (0, 1), got {fraction}")
    held: list[int] = []
    by_category: dict[str | None, list[int]] = {}
    for s in ds.samples:
        if s.label >= 0 and s.label not in by_category.setdefault(s.category, []):
            by_category[s.category].append(s.label)
    for category, labels in sorted(by_category.items(), key=lambda kv: str(kv[0])):
        if len(labels) < 3:
            raise DatasetError(f"{ds.name}: category {category!r} has {len(labels)} classes; holding out 2 for "
                               "validation needs at least 3")
        rng = np.random.default_rng([seed, zlib.crc32(str(category).encode())])
        n = min(max(2, round(fraction * len(labels))), len(labels) - 1)
        held += rng.permutation(sorted(labels))[:n].tolist()
    kept = sorted(set(s.label for s in ds.samples if s.label >= 0) - set(held))
    return (ds.with_classes(kept, name=f"{ds.name}:fit"), ds.with_classes(sorted(held), name=f"{ds.name}:val"))


@dataclass
class OsfgirConfig:
    """How an OSFGIR split is drawn (see `build_osfgir_split`)."""

    aux_fraction: float = 0.5
    query_fraction: float = 0.1
    queries_per_class: int | None = None
    max_images_per_class: int | None = None
    seed: int = 0


@dataclass
class OsfgirSplit:
    """Auxiliary set AD (labelled, species disjoint from D), database D (with distractors, label -1) and the
    queries drawn out of D. `database` and `queries` share one class list, so equal labels mean relevant."""

    auxiliary: FineGrainedDataset
    database: FineGrainedDataset
    queries: FineGrainedDataset
    categories: list[str]
    config: OsfgirConfig = field(default_factory=OsfgirConfig)

    @property
    def seed(self) -> int:
        return self.config.seed

    def save(self, folder: str | os.PathLike) -> Path:
        """Write auxiliary.csv, database.csv, queries.csv (manifests) and split.json; returns the folder."""
        folder = Path(folder)
        for part in ("auxiliary", "database", "queries"):
            write_manifest(getattr(self, part), folder / f"{part}.csv")
        meta = {
            "config": to_dict(self.config),
            "categories": self.categories,
            "auxiliary_classes": self.auxiliary.classes,
            "database_classes": self.database.classes,
        }
        atomic_write_text(folder / "split.json", json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> OsfgirSplit:
        """Read a split written by `save`, with its exact class lists."""
        folder = Path(folder)
        meta_path = folder / "split.json"
        if not meta_path.is_file():
            raise DatasetError(f"not an OSFGIR split folder (no split.json): {folder}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            config = from_dict(OsfgirConfig, meta["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"cannot read {meta_path}: {e}") from None
        parts = {
            part: _with_class_list(read_manifest(folder / f"{part}.csv"), meta[key], part)
            for part, key in (
                ("auxiliary", "auxiliary_classes"),
                ("database", "database_classes"),
                ("queries", "database_classes"),
            )
        }
        return cls(categories=list(meta["categories"]), config=config, **parts)


def _with_class_list(ds: FineGrainedDataset, classes: list[str], name: str) -> FineGrainedDataset:
    index = {c: k for k, c in enumerate(classes)}
    missing = [c for c in ds.classes if c not in index]
    if missing:
        raise DatasetError(f"{name}.csv uses class {missing[0]!r} missing from split.json")
    samples = [replace(s, label=index[ds.classes[s.label]] if s.label >= 0 else -1) for s in ds.samples]
    return FineGrainedDataset(name=name, root=ds.root, classes=list(classes), samples=samples)


def build_osfgir_split(
    datasets: dict[str, FineGrainedDataset],
    aux_fraction: float = 0.5,
    query_fraction: float = 0.1,
    queries_per_class: int | None = None,
    distractors: FineGrainedDataset | None = None,
    seed: int = 0,
    max_images_per_class: int | None = None,
) -> OsfgirSplit:
    """Build an OSFGIR split from {meta-category: dataset}.

    Per category a seeded `aux_fraction` of the species goes to AD, the rest to D; from each D species
    `queries_per_class` (else `query_fraction`, at least 1) images become queries and leave D, always keeping
    one relevant image in D. Unlabelled source images and `distractors` join D with label -1. Class names
    become "<category>/<name>"; every sample carries its category. Official splits are ignored.
    """
    config = OsfgirConfig(aux_fraction, query_fraction, queries_per_class, max_images_per_class, seed)
    if not datasets:
        raise DatasetError("build_osfgir_split needs at least one {category: dataset}")
    if not 0 < aux_fraction < 1:
        raise DatasetError(f"aux_fraction must be in (0, 1), got {aux_fraction}")
    if queries_per_class is None and not 0 < query_fraction < 1:
        raise DatasetError(f"query_fraction must be in (0, 1), got {query_fraction}")

    aux_classes: list[str] = []
    aux: list[Sample] = []
    db_classes: list[str] = []
    db: list[Sample] = []
    queries: list[Sample] = []
    for category, ds in datasets.items():
        # one generator per category, so adding a category leaves the others' draws unchanged
        rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
        by_class: dict[int, list[Sample]] = {}
        for s in ds.samples:
            if s.label < 0:
                db.append(replace(s, category=category))
            else:
                by_class.setdefault(s.label, []).append(replace(s, category=category))
        species = sorted(by_class)
        if len(species) < 2:
            raise DatasetError(f"category {category!r} needs at least 2 species for AD and D, has {len(species)}")
        n_aux = min(max(1, round(aux_fraction * len(species))), len(species) - 1)
        aux_species = set(rng.permutation(species)[:n_aux].tolist())
        for label in species:
            images = _cap(by_class[label], max_images_per_class, rng)
            name = ds.classes[label]
            if not name.startswith(f"{category}/"):  # unique across categories; synthetic names carry it already
                name = f"{category}/{name}"
            if label in aux_species:
                aux.extend(replace(s, label=len(aux_classes)) for s in images)
                aux_classes.append(name)
                continue
            new = len(db_classes)
            db_classes.append(name)
            n_q = queries_per_class if queries_per_class is not None else max(1, round(query_fraction * len(images)))
            n_q = min(n_q, len(images) - 1)  # a query needs a relevant image left in the database
            picked = set(rng.choice(len(images), size=n_q, replace=False).tolist()) if n_q > 0 else set()
            for i, s in enumerate(images):
                (queries if i in picked else db).append(replace(s, label=new))
    if distractors is not None:
        db.extend(replace(s, label=-1, category=s.category or "distractors") for s in distractors.samples)

    name = "+".join(datasets)
    root = Path(os.path.commonpath([str(ds.root) for ds in datasets.values()]))
    return OsfgirSplit(
        auxiliary=FineGrainedDataset(f"{name}:AD", root, aux_classes, aux),
        database=FineGrainedDataset(f"{name}:D", root, db_classes, db),
        queries=FineGrainedDataset(f"{name}:Q", root, db_classes, queries),
        categories=list(datasets),
        config=config,
    )


def database_split(
    auxiliary: dict[str, FineGrainedDataset], database: FineGrainedDataset, query_fraction: float = 0.1,
    seed: int = 0,
) -> OsfgirSplit:
    """A split for a user's own database: every labelled species of `auxiliary` ({meta-category: dataset}) forms
    AD, the `database` (any images, labels optional) is D, and a seeded `query_fraction` of it (at least one
    image) becomes the queries and leaves D. The database's own labels, when it has some, say what is relevant."""
    if not 0 < query_fraction < 1:
        raise DatasetError(f"query_fraction must be in (0, 1), got {query_fraction}")
    if len(database) < 2:
        raise DatasetError(f"database {database.name!r} needs at least 2 images (a query and an image to find)")
    rng = np.random.default_rng([seed, zlib.crc32(database.name.encode())])
    n_queries = min(len(database) - 1, max(1, round(query_fraction * len(database))))
    picked = set(rng.choice(len(database), size=n_queries, replace=False).tolist())
    merged = merge_categories(auxiliary)
    queries = [s for i, s in enumerate(database.samples) if i in picked]
    rest = [s for i, s in enumerate(database.samples) if i not in picked]
    return OsfgirSplit(
        auxiliary=replace(merged, name=f"{merged.name}:AD"),
        database=replace(database, name=f"{database.name}:D", samples=rest),
        queries=replace(database, name=f"{database.name}:Q", samples=queries),
        categories=list(auxiliary),
        config=OsfgirConfig(aux_fraction=1.0, query_fraction=query_fraction, seed=seed),
    )


def _cap(images: list[Sample], limit: int | None, rng: np.random.Generator) -> list[Sample]:
    """At most `limit` images, drawn at random but kept in their original order."""
    if limit is None or len(images) <= limit:
        return images
    keep = np.sort(rng.choice(len(images), size=limit, replace=False))
    return [images[i] for i in keep]


SHARED_COMPOSITE = [DatasetSpec("birds", Path("cub100")), DatasetSpec("cars", Path("stanford_cars")),
                    DatasetSpec("flowers", Path("flowers102_partial"))]
"""The shared real-image composite: each meta-category and its folder in shared/data."""


def read_shared_composite(root: str | os.PathLike) -> dict[str, FineGrainedDataset]:
    """The shared real-image composite (cub100 as birds, stanford_cars as cars, flowers102_partial as flowers)."""
    return read_composite(SHARED_COMPOSITE, root)
