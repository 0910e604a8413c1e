"""Auxiliary sets as a user gives them: one labelled dataset (a one-category system) or several composed into
meta-categories (`--aux birds=cub/ --aux cars=cars/`, a `datasets:` list in a config)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fgia.data.readers import ACCEPTED, DatasetError, read_dataset
from fgia.data.samples import FineGrainedDataset, Sample

log = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    """One dataset of a composite: its meta-category name, where it is (a relative path is taken from the
    config's data root when there is one) and its layout (`fgia datasets list`; "auto" detects it)."""

    category: str
    path: Path
    format: str = "auto"

    def __post_init__(self) -> None:
        if not self.category or "/" in self.category:
            raise DatasetError(f"a meta-category name must be non-empty and without '/', got {self.category!r}")
        self.path = Path(self.path)


def parse_dataset_spec(text: str) -> DatasetSpec:
    """`NAME=PATH` (as `fgia train --aux` takes it) as a DatasetSpec."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise DatasetError(f"expected NAME=PATH (e.g. birds=data/cub), got {text!r}")
    return DatasetSpec(name.strip(), Path(path.strip()))


def read_composite(specs: list[DatasetSpec], root: str | os.PathLike | None = None) -> dict[str, FineGrainedDataset]:
    """{meta-category: dataset} for `specs`, every sample tagged with its category; relative paths from `root`."""
    if not specs:
        raise DatasetError("no datasets to compose: give at least one NAME=PATH")
    seen = [s.category for s in specs]
    twice = sorted({c for c in seen if seen.count(c) > 1})
    if twice:
        raise DatasetError(f"meta-category {twice[0]!r} is given twice; give one dataset per meta-category")
    base = Path(root) if root is not None else Path()
    return {s.category: read_dataset(s.path if s.path.is_absolute() else base / s.path, s.format,
                                     category=s.category) for s in specs}


def merge_categories(datasets: dict[str, FineGrainedDataset]) -> FineGrainedDataset:
    """One labelled dataset of several meta-categories: class names become "<category>/<name>" (unique across
    categories), labels are renumbered, every sample carries its category, unlabelled samples are left out."""
    classes: list[str] = []
    samples: list[Sample] = []
    for category, ds in datasets.items():
        offset = len(classes)
        classes += [name if name.startswith(f"{category}/") else f"{category}/{name}" for name in ds.classes]
        samples += [replace(s, label=s.label + offset, category=category) for s in ds.samples if s.label >= 0]
    name = "+".join(datasets)
    root = Path(os.path.commonpath([str(ds.root) for ds in datasets.values()]))
    return FineGrainedDataset(name=name, root=root, classes=classes, samples=samples)


def labelled_set(ds: FineGrainedDataset, category: str | None = None) -> FineGrainedDataset:
    """`ds` ready to train a system on: its labelled samples only, and, when no sample has a meta-category, all of
    them in one (`category`, else the dataset's folder name): a one-category system. Unlabelled data is refused
    with what each layout needs."""
    labelled = [s for s in ds.samples if s.label >= 0]
    if not labelled:
        raise DatasetError(f"{ds.root} has {len(ds)} image(s) and no labels, so nothing to train on. {ACCEPTED}")
    if len(labelled) < len(ds):
        log.warning("%s: leaving %d unlabelled image(s) out of the auxiliary set", ds.name, len(ds) - len(labelled))
    if all(s.category is None for s in labelled):
        name = category or default_category(ds)
        labelled = [replace(s, category=name) for s in labelled]
    return replace(ds, samples=labelled)


def default_category(ds: FineGrainedDataset) -> str:
    """The meta-category a dataset without one gets: its root folder's name (a manifest's file stem)."""
    root = Path(ds.root)
    return (root.stem if root.is_file() else root.name) or ds.name
