"""The paper's category-specific CN-Nets: one model per meta-category, one unified model, a coarse router."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from fgia.data.samples import FineGrainedDataset
from fgia.train.config import TrainConfig
from fgia.train.trainer import TrainResult, fit

UNIFIED = "unified"
COARSE = "coarse"


def category_classes(ds: FineGrainedDataset, category: str) -> list[int]:
    """Ids of the classes that have samples of meta-category `category` in `ds`."""
    class_ids = sorted({s.label for s in ds.samples if s.category == category})
    if not class_ids:
        raise ValueError(f"{ds.name!r} has no samples of category {category!r}")
    return class_ids


def category_subset(ds: FineGrainedDataset, category: str, class_ids: list[int]) -> FineGrainedDataset:
    """The samples of one meta-category over `class_ids` only, relabelled 0..k-1 in that order."""
    return ds.filter(lambda s: s.category == category).with_classes(class_ids, name=f"{ds.name}:{category}")


def coarse_dataset(ds: FineGrainedDataset, categories: list[str]) -> FineGrainedDataset:
    """The same images labelled by meta-category (classes = `categories`), for coarse routing."""
    index = {c: i for i, c in enumerate(categories)}
    unknown = {s.category for s in ds.samples} - index.keys()
    if unknown:
        raise ValueError(f"{ds.name!r} has categories outside {categories}: {sorted(map(str, unknown))}")
    samples = [replace(s, label=index[s.category]) for s in ds.samples]
    return FineGrainedDataset(name=f"{ds.name}:coarse", root=ds.root, classes=categories, samples=samples)


def fit_per_category(cfg: TrainConfig, aux: FineGrainedDataset, out_dir: str | os.PathLike,
                     val: FineGrainedDataset | None = None, progress: bool = True,
                     coarse: bool = False) -> dict[str, TrainResult]:
    """Train a unified model on all of `aux`, then one model per meta-category (and, with `coarse`, a
    meta-category classifier), each in `out_dir/<name>/`. Returns {"unified": ..., category: ..., "coarse": ...}.

    Every sample needs its `category`; `val`, when given, is split the same way.
    """
    missing = [s.path for s in aux.samples if s.category is None]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) of {aux.name!r} have no meta-category, e.g. {missing[0]}")
    categories = sorted({s.category for s in aux.samples})
    if {UNIFIED, COARSE} & set(categories):
        raise ValueError(f"a meta-category may not be called {UNIFIED!r} or {COARSE!r}")
    out = Path(out_dir)
    runs: dict[str, tuple[FineGrainedDataset, FineGrainedDataset | None]] = {UNIFIED: (aux, val)}
    for category in categories:
        ids = category_classes(aux, category)
        runs[category] = (category_subset(aux, category, ids), category_subset(val, category, ids) if val else None)
    if coarse:
        runs[COARSE] = (coarse_dataset(aux, categories), coarse_dataset(val, categories) if val else None)
    return {name: fit(replace(cfg, out_dir=out / name), train, val_set, progress)
            for name, (train, val_set) in runs.items()}
