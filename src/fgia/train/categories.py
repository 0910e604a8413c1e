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
                     coarse: bool = False, category_epochs: int | None = None) -> dict[str, TrainResult]:
    """Train a unified model on all of `aux`, then one model per meta-category (and, with `coarse`, a
    meta-category classifier), each in `out_dir/<name>/`. Returns {"unified": ..., category: ..., "coarse": ...}.

    Every sample needs its `category`; `val`, when given, is split the same way. With `category_epochs`, each
    category model starts from the trained unified model restricted to its classes (the model's
    `restricted_to`) and is fine-tuned for that many epochs with `cfg`'s rates; without, it trains from
    `cfg`'s weights like the unified one.
    """
    missing = [s.path for s in aux.samples if s.category is None]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) of {aux.name!r} have no meta-category, e.g. {missing[0]}")
    categories = sorted({s.category for s in aux.samples})
    if {UNIFIED, COARSE} & set(categories):
        raise ValueError(f"a meta-category may not be called {UNIFIED!r} or {COARSE!r}")
    small = {c: n for c in categories if (n := sum(s.category == c for s in aux.samples)) < cfg.batch_size}
    if small:  # checked before training anything: the unified model would otherwise train first, in vain
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the images of meta-categor"
                         f"{'ies' if len(small) > 1 else 'y'} {', '.join(f'{c} ({n})' for c, n in small.items())} "
                         f"of {aux.name!r}; lower batch_size to at most {min(small.values())}")
    out = Path(out_dir)
    if category_epochs is not None and category_epochs < 1:
        raise ValueError(f"category_epochs must be >= 1 (or None to train category models from scratch), got "
                         f"{category_epochs}")
    results = {UNIFIED: fit(replace(cfg, out_dir=out / UNIFIED), aux, val, progress)}
    unified = results[UNIFIED].model
    if category_epochs is not None and not hasattr(unified, "restricted_to"):
        raise TypeError(f"category_epochs needs a model with restricted_to(class_ids); {cfg.model!r} has none")
    for category in categories:
        ids = category_classes(aux, category)
        train, val_set = category_subset(aux, category, ids), category_subset(val, category, ids) if val else None
        if category_epochs is None:
            results[category] = fit(replace(cfg, out_dir=out / category), train, val_set, progress)
            continue
        fine_tune = replace(cfg, out_dir=out / category, epochs=category_epochs,
                            warmup_epochs=min(cfg.warmup_epochs, category_epochs))
        results[category] = fit(fine_tune, train, val_set, progress, model=unified.restricted_to(ids))
    if coarse:
        results[COARSE] = fit(replace(cfg, out_dir=out / COARSE), coarse_dataset(aux, categories),
                              coarse_dataset(val, categories) if val else None, progress)
    return results
