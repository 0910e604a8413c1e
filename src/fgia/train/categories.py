"""The paper's category-specific models: one unified model on every meta-category, then one per meta-category.

Each category model starts from the trained unified model restricted to its category's species (the model's
`restricted_to`) and is fine-tuned on that category alone. On small auxiliary sets this beats training each one
from the pretrained weights (a cars-only model trained from ImageNet weights was worse on cars than the unified
one), and with a frozen lower trunk every model keeps sharing it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch.nn as nn

from fgia.data.samples import FineGrainedDataset
from fgia.train.config import TrainConfig
from fgia.train.trainer import TrainResult, fit

UNIFIED = "unified"


def category_classes(ds: FineGrainedDataset, category: str) -> list[int]:
    """Ids of the classes that have samples of meta-category `category` in `ds`."""
    class_ids = sorted({s.label for s in ds.samples if s.category == category})
    if not class_ids:
        raise ValueError(f"{ds.name!r} has no samples of category {category!r}")
    return class_ids


def category_subset(ds: FineGrainedDataset, category: str, class_ids: list[int]) -> FineGrainedDataset:
    """The samples of one meta-category over `class_ids` only, relabelled 0..k-1 in that order."""
    return ds.filter(lambda s: s.category == category).with_classes(class_ids, name=f"{ds.name}:{category}")


def categories_of(ds: FineGrainedDataset) -> list[str]:
    """The sorted meta-categories of `ds`; every sample must have one, and none may be called "unified"."""
    missing = [s.path for s in ds.samples if s.category is None]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) of {ds.name!r} have no meta-category, e.g. {missing[0]}")
    categories = sorted({s.category for s in ds.samples})
    if UNIFIED in categories:
        raise ValueError(f"a meta-category may not be called {UNIFIED!r}")
    return categories


def fit_category_model(cfg: TrainConfig, unified: nn.Module, aux: FineGrainedDataset, category: str,
                       epochs: int, val: FineGrainedDataset | None = None, progress: bool = True) -> TrainResult:
    """Fine-tune `unified` restricted to `category`'s species on that category's images for `epochs`."""
    if epochs < 1:
        raise ValueError(f"a category model needs epochs >= 1, got {epochs}")
    if not hasattr(unified, "restricted_to"):
        raise TypeError(f"category models need a model with restricted_to(class_ids); {cfg.model!r} has none")
    ids = category_classes(aux, category)
    out = Path(cfg.out_dir).parent / category if cfg.out_dir is not None else None
    fine_tune = replace(cfg, out_dir=out, epochs=epochs, warmup_epochs=min(cfg.warmup_epochs, epochs), resume=False)
    return fit(fine_tune, category_subset(aux, category, ids),
               category_subset(val, category, ids) if val is not None else None, progress,
               model=unified.restricted_to(ids))


def fit_per_category(cfg: TrainConfig, aux: FineGrainedDataset, out_dir: str | os.PathLike, category_epochs: int,
                     val: FineGrainedDataset | None = None, progress: bool = True) -> dict[str, TrainResult]:
    """Train a unified model on all of `aux`, then fine-tune one model per meta-category from it for
    `category_epochs`, each in `out_dir/<name>/`. Returns {"unified": ..., category: ...}; `val`, when given, is
    split the same way."""
    categories = categories_of(aux)
    small = {c: n for c in categories if (n := sum(s.category == c for s in aux.samples)) < cfg.batch_size}
    if small:  # checked before training anything: the unified model would otherwise train first, in vain
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the images of meta-categor"
                         f"{'ies' if len(small) > 1 else 'y'} {', '.join(f'{c} ({n})' for c, n in small.items())} "
                         f"of {aux.name!r}; lower batch_size to at most {min(small.values())}")
    out = Path(out_dir)
    results = {UNIFIED: fit(replace(cfg, out_dir=out / UNIFIED), aux, val, progress)}
    unified = results[UNIFIED].model
    for category in categories:
        results[category] = fit_category_model(replace(cfg, out_dir=out / UNIFIED), unified, aux, category,
                                               category_epochs, val, progress)
    return results
