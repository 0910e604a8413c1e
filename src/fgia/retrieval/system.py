"""The trained OSFGIR system: its models, PCAs and coarse classifier in one directory, and how it is trained.

Training (`train_system`) on the auxiliary set AD:
1. The backbone's lower stages stay at their pretrained weights (`frozen_stages`); their output is computed once
   per AD image and cached view (`fgia.train.cache`), and every model below trains only its top on it.
2. Validation chooses the recipe (`select_recipe`): a share of each meta-category's AD species is held out, the
   candidate heads train on the rest and are scored after every epoch by retrieval mAP on the held-out species;
   then category models, off-the-shelf fusion, the region part and query expansion are each kept only when they
   raise that mAP. The database is never looked at.
3. The chosen recipe trains on all of AD: the unified model, and one model per meta-category fine-tuned from it
   when validation kept them; the PCAs and the coarse classifier are fitted on AD's features.

Layout of a system directory:

    system.yaml              the resolved SystemConfig (the recipe validation chose)
    system.json              categories, feature dimensions, the validation report, training times, the files the
                             system wrote (its fingerprint covers them, not whatever else is in the folder)
    models/<name>/           "unified", every meta-category (with category models), "offtheshelf" (with fusion)
    pca/coarse.*             PCA of the unified model's Conv-Net feature to `coarse_dim` (the coarse feature)
    pca/<name>-image.*       PCA of model <name>'s whole-image feature to the part dimension
    pca/<name>-region.*      ... and of its region feature (with regions)
    classifier.npz           logistic regression on the coarse feature -> meta-category
    hash/                    with `hash_bits`: the hashing model (`fgia.models.hashing`) giving binary codes
    aux_unified.npz          AD's unified Conv-Net features and meta-category indices (for the classifier table)

Feature conventions (shared by indexing and querying, so they live here only): a model's feature of an image
or region is its embedding, fused with the off-the-shelf GAP as [sqrt(1 - w) L2(learned), sqrt(w) L2(GAP)]
when `offtheshelf_weight` w > 0; every PCA L2-normalises its input and its output (`FeaturePCA`). The fine
feature under model m is [image part, region part] (2 x part_dim), so both parts weigh the same.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn
from PIL import Image
from rich.console import Console
from sklearn.linear_model import LogisticRegression

from fgia.config import load_yaml, save_yaml
from fgia.data.compose import labelled_set
from fgia.data.protocols import hold_out_classes
from fgia.data.readers import DatasetError
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.distributed import extract_models_ray
from fgia.features.extract import (
    FeatureSet,
    TrunkGroup,
    extract_from_images,
    extract_models,
    group_spec,
)
from fgia.features.pca import FeaturePCA, l2_normalize
from fgia.index import file_digest
from fgia.metrics import evaluate_retrieval
from fgia.models import create_model, load_model, save_model
from fgia.models.spec import ExtractionSpec
from fgia.retrieval.search import average_query_expansion, knn
from fgia.runtime import (
    atomic_path,
    atomic_write_text,
    output_folder,
    pick_device,
    seed_everything,
)
from fgia.train import UNIFIED, TrainConfig, categories_of, fit, fit_category_model
from fgia.train.cache import TrunkCache, trunk_cache
from fgia.train.trainer import normalisation

SYSTEM_FILE = "system.json"
CONFIG_FILE = "system.yaml"
CLASSIFIER_FILE = "classifier.npz"
AUX_FILE = "aux_unified.npz"
OFFTHESHELF = "offtheshelf"
SYSTEM_KIND = "system"
HASH = "hash"
HASH_MODELS = ("a2net_hash",)  # hashing models with maps, so that the system's extraction can keep them


@dataclass
class SelectionConfig:
    """What validation on held-out AD species chooses (see `select_recipe`).

    `validation_fraction` of each meta-category's AD species are held out (0 turns selection off: the system is
    built exactly as configured). Every head in `heads` trains on the other species for `max_epochs`, scored after
    each epoch (the head and epoch choice). With the best, in this order, each kept only when it raises validation
    mAP by more than `min_gain`: category models fine-tuned for `category_epochs`, fusion with the off-the-shelf
    GAP at each of `offtheshelf_weights`, the region part, query expansion with each of `qe_tops`.
    """

    validation_fraction: float = 0.2
    heads: tuple[str, ...] = ("cosine", "cnnets")
    max_epochs: int = 3
    category_epochs: int = 2
    offtheshelf_weights: tuple[float, ...] = (0.2, 0.4)
    try_regions: bool = True
    qe_tops: tuple[int, ...] = (3, 5, 10)
    min_gain: float = 0.002

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.max_epochs < 1 or self.category_epochs < 0:
            raise ValueError("max_epochs must be >= 1 and category_epochs >= 0")
        if not self.heads:
            raise ValueError("selection needs at least one candidate head")
        if any(not 0.0 < w < 1.0 for w in self.offtheshelf_weights) or any(n < 1 for n in self.qe_tops):
            raise ValueError("offtheshelf_weights must lie in (0, 1) and qe_tops be >= 1")


@dataclass
class SystemConfig:
    """How to train and run an OSFGIR system (the recipe; `selection` may change it, see `select_recipe`).

    Model: CN-Nets on `backbone` with `weights`; `head` "cnnets" (the paper's Conv-Net + Norm-Net) or "cosine";
    the sub-nets own the last `head_stages` stages; `frozen_stages` of the shared trunk stay pretrained (None: all
    of them, so only the sub-nets train; 0: full fine-tuning). Training: `epochs` of AdamW-style optimisation
    (`optimizer`, `lr` for new layers, `backbone_lr_scale` for pretrained ones, `label_smoothing`);
    `category_epochs` > 0 adds one model per meta-category fine-tuned from the unified one for that many epochs;
    `train_options` sets any other `TrainConfig` field (cache_views, cache_dir, weight_decay, ...).
    Features: `image_size`, `flip` (average with the mirror image), `regions` (the discriminative region:
    `threshold`, `min_area`, cropped from an image loaded at `region_zoom` x), `offtheshelf_weight` (fusion with
    the pretrained GAP), `coarse_dim`, `part_dim`; the PCAs and the coarse classifier are fitted on at most
    `fit_images` AD images (a seeded draw, the same share of each meta-category). Search: `top_k_fraction` of the
    database re-ranked, at most `top_k` candidates (`top_k` when no fraction), `qe_top` hits averaged by query
    expansion (0: none). `classifier_dims`: coarse-feature dimensions for the classifier-accuracy table (0 = full).
    `hash_bits`: code lengths of a hashing model (`hash_model`, trained on AD with the same recipe and frozen trunk
    after the unified model) whose binary codes `fgia index --codes` stores for Hamming search; empty: none.
    """

    backbone: str = "resnet18"
    weights: str | None = None
    image_size: int = 64
    head: str = "cosine"
    head_stages: int = 1
    head_dim: int = 512
    head_layers: int = 0
    frozen_stages: int | None = None
    epochs: int = 3
    category_epochs: int = 0
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    backbone_lr_scale: float = 0.1
    label_smoothing: float = 0.1
    coarse_dim: int = 32
    part_dim: int = 512
    fit_images: int = 4000
    top_k: int = 2500
    top_k_fraction: float | None = 0.25
    flip: bool = False
    regions: bool = True
    threshold: float = 0.5
    min_area: float = 0.02
    region_zoom: float = 1.0
    offtheshelf_weight: float = 0.0
    qe_top: int = 5
    classifier_dims: tuple[int, ...] = (8, 16, 32, 64, 128, 0)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    train_options: dict[str, Any] = field(default_factory=dict)
    hash_bits: tuple[int, ...] = ()
    hash_model: str = "a2net_hash"

    def __post_init__(self) -> None:
        if self.hash_model not in HASH_MODELS:
            raise ValueError(f"hash_model must be one of {HASH_MODELS}, got {self.hash_model!r}")
        for name in ("coarse_dim", "part_dim", "fit_images", "top_k", "image_size", "epochs", "head_dim",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.category_epochs < 0:
            raise ValueError(f"category_epochs must be >= 0 (0: no category models), got {self.category_epochs}")
        if self.top_k_fraction is not None and not 0.0 < self.top_k_fraction <= 1.0:
            raise ValueError(f"top_k_fraction must be in (0, 1], got {self.top_k_fraction}")
        if self.region_zoom < 1.0:
            raise ValueError(f"region_zoom must be >= 1, got {self.region_zoom}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.offtheshelf_weight < 1.0:
            raise ValueError(f"offtheshelf_weight must be in [0, 1), got {self.offtheshelf_weight}")
        if self.qe_top < 0:
            raise ValueError(f"qe_top must be >= 0 (0 disables query expansion), got {self.qe_top}")

    def resolve_top_k(self, database_size: int) -> int:
        """K for a database of `database_size` images: `top_k_fraction` of it, at most `top_k` (re-ranking costs
        K fine distances per query, so the cap keeps a query's cost flat as the database grows), or `top_k`
        without a fraction."""
        if self.top_k_fraction is not None:
            return max(1, min(self.top_k, round(self.top_k_fraction * database_size)))
        return self.top_k

    def extraction_spec(self, models: Mapping[str, nn.Module] | TrunkGroup) -> ExtractionSpec:
        """How the system reads images for AD fitting, indexing and querying: its size and region settings, with
        the normalisation its `models` carry."""
        return group_spec(models, image_size=self.image_size, regions=self.regions, threshold=self.threshold,
                          min_area=self.min_area, region_zoom=self.region_zoom, flip=self.flip, region_from=UNIFIED)

    def model_kwargs(self) -> dict[str, Any]:
        """`create_model("cnnets", num_classes=..., **model_kwargs())` builds the unified model."""
        return {"backbone": self.backbone, "weights": self.weights, "head": self.head,
                "head_stages": self.head_stages, "head_dim": self.head_dim, "head_layers": self.head_layers,
                "frozen_stages": self.frozen_stages}

    def train_config(self, out_dir: Path | None = None, epochs: int | None = None) -> TrainConfig:
        """The TrainConfig the system's models train with (`epochs` overrides the configured number)."""
        epochs = epochs or self.epochs
        options = {
            "model": "cnnets", "model_kwargs": self.model_kwargs(), "image_size": self.image_size,
            "epochs": epochs, "batch_size": self.batch_size, "optimizer": self.optimizer, "lr": self.lr,
            "backbone_lr_scale": self.backbone_lr_scale, "label_smoothing": self.label_smoothing,
            "warmup_epochs": min(0.3, float(epochs)), "seed": self.seed, "device": self.device,
            "workers": self.workers, "out_dir": out_dir, **self.train_options,
        }
        return TrainConfig(**options)

    def hash_train_config(self, out_dir: Path | None = None) -> TrainConfig:
        """The TrainConfig of the hashing model: the system's recipe with `hash_model`, its loss and `hash_bits`."""
        model_kwargs = {"backbone": self.backbone, "weights": self.weights, "bits": list(self.hash_bits),
                        "frozen_stages": self.frozen_stages}
        return replace(self.train_config(out_dir), model=self.hash_model, model_kwargs=model_kwargs,
                       loss=self.hash_model)


class CoarseClassifier:
    """Logistic regression on the coarse feature predicting the meta-category (index into `categories`)."""

    def __init__(self, model: LogisticRegression) -> None:
        self.model = model

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray, seed: int = 0) -> CoarseClassifier:
        """Fit on features (n, d) and meta-category indices (n,)."""
        if len(np.unique(targets)) < 2:
            # One meta-category: routing is trivial, but keep the same interface.
            model = LogisticRegression()
            model.classes_ = np.unique(targets)
            model.coef_ = np.zeros((1, features.shape[1]))
            model.intercept_ = np.zeros(1)
            return cls(model)
        return cls(LogisticRegression(max_iter=2000, random_state=seed).fit(features, targets))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Meta-category index per row."""
        if len(self.model.classes_) == 1 or not len(features):  # sklearn refuses to predict zero rows
            return np.full(len(features), self.model.classes_[0], dtype=np.int64)
        return self.model.predict(features).astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, coef=self.model.coef_, intercept=self.model.intercept_, classes=self.model.classes_)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CoarseClassifier:
        with np.load(path, allow_pickle=False) as data:
            model = LogisticRegression()
            model.coef_, model.intercept_, model.classes_ = data["coef"], data["intercept"], data["classes"]
        return cls(model)


def fit_coarse(
    embeddings: np.ndarray, targets: np.ndarray, dim: int, seed: int = 0
) -> tuple[FeaturePCA | None, CoarseClassifier]:
    """PCA of unified embeddings to `dim` (None for 0 = full) + the coarse classifier on the result."""
    pca = FeaturePCA(min(dim, *embeddings.shape)).fit(embeddings) if dim else None
    return pca, CoarseClassifier.fit(_coarse(pca, embeddings), targets, seed)


def coarse_accuracy_table(
    train_embeddings: np.ndarray,
    train_targets: np.ndarray,
    test_embeddings: np.ndarray,
    test_targets: np.ndarray,
    dims: Sequence[int],
    seed: int = 0,
) -> dict[str, float]:
    """Coarse classifier accuracy on the test set against PCA dimension ("full" for 0); the paper's Table 4."""
    table = {}
    for dim in dims:
        pca, clf = fit_coarse(train_embeddings, train_targets, dim, seed)
        table[str(dim) if dim else "full"] = float(np.mean(clf.predict(_coarse(pca, test_embeddings)) == test_targets))
    return table


def _coarse(pca: FeaturePCA | None, embeddings: np.ndarray) -> np.ndarray:
    return l2_normalize(embeddings) if pca is None else pca.transform(embeddings)


def fuse_offtheshelf(learned: np.ndarray, offtheshelf: np.ndarray | None, weight: float) -> np.ndarray:
    """[sqrt(1 - w) L2(learned), sqrt(w) L2(off-the-shelf)], or L2(learned) when w = 0."""
    if weight == 0 or offtheshelf is None:
        return l2_normalize(learned)
    return np.concatenate([np.sqrt(1 - weight) * l2_normalize(learned), np.sqrt(weight) * l2_normalize(offtheshelf)],
                          axis=1)


def conv_feature(model: nn.Module, embedding: np.ndarray) -> np.ndarray:
    """The Conv-Net feature f_Conv inside a CN-Nets embedding (its first `conv_feature_dim` dimensions)."""
    return embedding[:, : getattr(model, "conv_feature_dim", embedding.shape[1])]


@dataclass
class System:
    """A loaded system: models (sharing one frozen lower trunk), PCAs and classifier, with the feature functions
    indexing and querying share."""

    path: Path
    config: SystemConfig
    categories: list[str]
    models: dict[str, nn.Module]
    coarse_pca: FeaturePCA
    part_pcas: dict[str, tuple[FeaturePCA, FeaturePCA | None]]
    classifier: CoarseClassifier
    files: dict[str, str]  # the files the system wrote -> their SHA-256 now
    fingerprint: str
    hash_model: nn.Module | None = None
    group: TrunkGroup = field(init=False)

    def __post_init__(self) -> None:
        # The hashing model joins the extraction pass (its relaxed codes come out as features[HASH]) but is no
        # fine model.
        self.group = TrunkGroup({**self.models, **({HASH: self.hash_model} if self.hash_model is not None else {})})

    @property
    def spec(self) -> ExtractionSpec:
        """How the system reads images (from its config, see `SystemConfig.extraction_spec`)."""
        return self.config.extraction_spec(self.group)

    @property
    def fine_models(self) -> list[str]:
        """Models with a fine feature: "unified", then each meta-category's when the system has category models."""
        return [name for name in self.models if name != OFFTHESHELF]

    def model_for(self, category: int) -> str:
        """The fine model of meta-category index `category` (the unified one without category models)."""
        name = self.categories[category]
        return name if name in self.models else UNIFIED

    def features(self, samples: Sequence[Sample] | None = None, images: Sequence[Image.Image] | None = None,
                 progress: bool = False, engine: str = "local") -> dict[str, FeatureSet]:
        """Every model's features of dataset samples or in-memory images, in one pass (unreadable samples skipped,
        see `FeatureSet.index`); `engine` "ray" extracts the samples on Ray (`extract_models_ray`)."""
        if images is not None:
            return extract_from_images(self.group, images, self.spec, device=self.config.device, keep_maps=True)
        extract = extract_models_ray if engine == "ray" else extract_models
        return extract(self.group, samples, self.spec, workers=self.config.workers, device=self.config.device,
                       progress=progress)

    def coarse(self, feats: dict[str, FeatureSet]) -> tuple[np.ndarray, np.ndarray]:
        """(full-d Conv-Net feature, `coarse_dim` coarse feature) of the unified model, both L2-normalised."""
        conv = conv_feature(self.models[UNIFIED], feats[UNIFIED].image)
        return l2_normalize(conv), self.coarse_pca.transform(conv)

    def route(self, coarse: np.ndarray) -> np.ndarray:
        """Predicted meta-category index (into `categories`) per coarse feature."""
        return self.classifier.predict(coarse)

    def fine(self, name: str, feats: dict[str, FeatureSet]) -> np.ndarray:
        """[image, region] fine feature of model `name` (see the module docstring)."""
        image_pca, region_pca = self.part_pcas[name]
        parts = [image_pca.transform(self._fused(name, feats, "image"))]
        if region_pca is not None:
            parts.append(region_pca.transform(self._fused(name, feats, "region")))
        return np.concatenate(parts, axis=1)

    def _fused(self, name: str, feats: dict[str, FeatureSet], part: str) -> np.ndarray:
        reference = getattr(feats[OFFTHESHELF], part) if OFFTHESHELF in feats else None
        return fuse_offtheshelf(getattr(feats[name], part), reference, self.config.offtheshelf_weight)

    @property
    def fine_dim(self) -> int:
        return sum(p.n_components for p in self.part_pcas[UNIFIED] if p is not None)


# ------------------------------------------------------------------------------------------------- training
def train_system(
    auxiliary: FineGrainedDataset, cfg: SystemConfig, out_dir: str | os.PathLike, progress: bool = True,
    console: Console | None = None, force: bool = False,
) -> Path:
    """Train the whole system on the auxiliary set AD and save it in `out_dir` (see the module docstring);
    returns `out_dir`. Unlabelled images of AD are left out; an AD without meta-categories is one category (the
    coarse stage then only narrows the search to the top-K, it routes nothing). The system is written beside
    `out_dir` and moved into place when complete; an existing system (whose indexes would stop loading) or a
    non-empty folder is refused unless `force` (see `fgia.runtime.output_folder`)."""
    with output_folder(out_dir, SYSTEM_KIND, force=force, replace_own=False) as out:
        _train_system(labelled_set(auxiliary), cfg, out, progress, console or Console(quiet=not progress))
    return Path(out_dir)


def _train_system(auxiliary: FineGrainedDataset, cfg: SystemConfig, out: Path, progress: bool,
                  console: Console) -> None:
    categories = categories_of(auxiliary)
    _check_batch_size(auxiliary, cfg, categories)
    seed_everything(cfg.seed)
    started = time.perf_counter()
    cache = _trunk_cache(auxiliary, cfg, progress)
    cache_s = time.perf_counter() - started
    selection: dict[str, Any] | None = None
    if cfg.selection.validation_fraction > 0:
        try:
            fit_set, val_set = hold_out_classes(auxiliary, cfg.selection.validation_fraction, cfg.seed)
        except DatasetError as err:
            console.log(f"[yellow]recipe selection skipped ({err}); the system is built as configured")
            selection = {"skipped": str(err)}
        else:
            console.log(f"choosing the recipe on {len(val_set.classes)} held-out AD species")
            cfg, selection = select_recipe(fit_set, val_set, cfg, cache, progress, console)
    save_yaml(cfg, out / CONFIG_FILE)
    console.log(f"training the final models on all {len(auxiliary)} AD images: head {cfg.head}, {cfg.epochs} "
                f"epochs, category models: {'yes' if cfg.category_epochs else 'no'}")
    train_started = time.perf_counter()
    models = _train_models(auxiliary, cfg, categories, out / "models", progress)
    train_s = time.perf_counter() - train_started
    if cfg.offtheshelf_weight > 0:
        models[OFFTHESHELF] = offtheshelf_model(cfg)
        save_model(models[OFFTHESHELF], out / "models" / OFFTHESHELF, ["none"])
    if cfg.hash_bits:
        console.log(f"training the hashing model ({cfg.hash_model}, {', '.join(map(str, cfg.hash_bits))} bits)")
        fit(cfg.hash_train_config(out / HASH), auxiliary, progress=progress)

    fit_set = _draw(auxiliary, cfg.fit_images, cfg.seed)
    console.log(f"fitting PCAs and the coarse classifier on the features of {len(fit_set)} AD images")
    feats = extract_models(models, fit_set.samples, cfg.extraction_spec(models), workers=cfg.workers,
                           device=cfg.device, progress=progress)
    read = feats[UNIFIED].index
    read_categories = np.array([fit_set.samples[i].category for i in read])
    rows = {name: np.arange(len(read)) if name == UNIFIED else np.flatnonzero(read_categories == name)
            for name in models if name != OFFTHESHELF}
    (out / "pca").mkdir(parents=True, exist_ok=True)
    # Every model's fine features must share one dimension, so PCA sizes are capped by the smallest AD subset.
    fused = {name: {part: _subset(feats, name, part, rows[name], cfg.offtheshelf_weight)
                    for part in ("image", "region") if part == "image" or cfg.regions} for name in rows}
    part_dim = min(cfg.part_dim, *(min(a.shape) for parts in fused.values() for a in parts.values()))
    for name, parts in fused.items():
        for part, array in parts.items():
            FeaturePCA(part_dim).fit(array).save(out / "pca" / f"{name}-{part}")
    conv = conv_feature(models[UNIFIED], feats[UNIFIED].image)
    targets = np.array([categories.index(c) for c in read_categories])
    coarse_pca, classifier = fit_coarse(conv, targets, cfg.coarse_dim, cfg.seed)
    coarse_pca.save(out / "pca" / "coarse")
    with atomic_path(out / AUX_FILE) as tmp, tmp.open("wb") as f:
        np.savez(f, embedding=conv, category=targets)
    classifier.save(out / CLASSIFIER_FILE)
    info = {
        "categories": categories,
        "models": list(models),
        "coarse_dim": coarse_pca.n_components,
        "part_dim": part_dim,
        "auxiliary_images": len(auxiliary),
        "selection": selection,
        "seconds": {"trunk_cache": cache_s, "selection": (selection or {}).get("seconds", 0.0), "train": train_s,
                    "total": time.perf_counter() - started},
        "cache_images": len(cache.rows),
        "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != "."),
    }
    atomic_write_text(out / SYSTEM_FILE, json.dumps(info, indent=2))


def _check_batch_size(aux: FineGrainedDataset, cfg: SystemConfig, categories: list[str]) -> None:
    """Refuse before any training a batch larger than AD or (with category models) than a category."""
    sizes = {"AD": len(aux)}
    if cfg.category_epochs or cfg.selection.validation_fraction:
        sizes |= {c: sum(s.category == c for s in aux.samples) for c in categories}
    small = {k: n for k, n in sizes.items() if n < cfg.batch_size}
    if small:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the images of {small}; lower batch_size")


def _draw(ds: FineGrainedDataset, n: int, seed: int) -> FineGrainedDataset:
    """At most `n` samples of `ds`, the same share of each meta-category, a seeded draw kept in dataset order."""
    if len(ds) <= n:
        return ds
    rng = np.random.default_rng(seed)
    categories = np.array([str(s.category) for s in ds.samples])
    keep: list[int] = []
    for category in np.unique(categories):
        rows = np.flatnonzero(categories == category)
        keep += rng.choice(rows, size=max(1, round(n * len(rows) / len(ds))), replace=False).tolist()
    return replace(ds, samples=[ds.samples[i] for i in sorted(keep)])


def _subset(feats: dict[str, FeatureSet], name: str, part: str, rows: np.ndarray, weight: float) -> np.ndarray:
    reference = getattr(feats[OFFTHESHELF], part)[rows] if OFFTHESHELF in feats else None
    return fuse_offtheshelf(getattr(feats[name], part)[rows], reference, weight)


def unified_model(cfg: SystemConfig, num_classes: int) -> nn.Module:
    """The (untrained) unified CN-Nets of a recipe, seeded so every build starts from the same weights."""
    seed_everything(cfg.seed)
    return create_model("cnnets", num_classes=num_classes, **cfg.model_kwargs())


def offtheshelf_model(cfg: SystemConfig) -> nn.Module:
    """The pretrained backbone as a model whose embedding is its GAP (untrained), sharing the frozen trunk."""
    frozen = unified_model(cfg, 1).frozen_stages
    seed_everything(cfg.seed)  # the unified model's initial trunk, pretrained weights or not
    return create_model("plain", num_classes=1, backbone=cfg.backbone, weights=cfg.weights, frozen_stages=frozen)


def _trunk_cache(aux: FineGrainedDataset, cfg: SystemConfig, progress: bool) -> TrunkCache:
    """The lower trunk's output for every AD image, computed first so that every later fit (on AD or a subset of
    it) reuses it."""
    train_cfg = cfg.train_config()
    model = unified_model(cfg, 1)
    if not model.frozen_stages:
        raise ValueError("the system trains on a cached frozen trunk: frozen_stages must be None or >= 1")
    mean, std = normalisation(model, train_cfg.mean, train_cfg.std)
    return trunk_cache(model.lower_trunk(), aux.samples, image_size=cfg.image_size, mean=mean, std=std,
                       views=train_cfg.cache_views, cache_dir=train_cfg.cache_dir, budget_gb=train_cfg.cache_budget_gb,
                       device=pick_device(cfg.device), batch_size=64, workers=cfg.workers, progress=progress)


def _train_models(aux: FineGrainedDataset, cfg: SystemConfig, categories: list[str], out: Path | None,
                  progress: bool, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, nn.Module]:
    """The unified model (and the category models when `cfg.category_epochs`), trained on `aux`."""
    train_cfg = cfg.train_config(out / UNIFIED if out else None)
    model = unified_model(cfg, len(aux.classes))
    models = {UNIFIED: fit(train_cfg, aux, progress=progress, model=model, on_epoch_end=on_epoch_end).model}
    if cfg.category_epochs and len(categories) > 1:
        for category in categories:
            models[category] = fit_category_model(train_cfg, models[UNIFIED], aux, category, cfg.category_epochs,
                                                  progress=progress).model
    return models


# ------------------------------------------------------------------------------------------------- selection
def validation_map(features: np.ndarray, labels: np.ndarray, categories: np.ndarray, qe_top: int = 0) -> float:
    """Leave-one-out retrieval mAP within each meta-category (other categories' images are never relevant and
    the coarse stage keeps them out), over every query; `qe_top` > 0 first expands each query with its top hits."""
    total, count = 0.0, 0
    for category in np.unique(categories):
        rows = np.flatnonzero(categories == category)
        f, y = features[rows], labels[rows]
        queries = f
        if qe_top:
            hits = knn(f, f, qe_top + 1).ids[:, 1:]  # the nearest hit is the query itself
            queries = average_query_expansion(f, f[hits])
        scores = evaluate_retrieval(queries, y, f, y, ks=(1,), exclude_ids=np.arange(len(rows)))
        total += scores["mAP"] * scores["n_queries"]
        count += scores["n_queries"]
    return total / max(1, count)


def select_recipe(
    fit_set: FineGrainedDataset, val_set: FineGrainedDataset, cfg: SystemConfig, cache: TrunkCache,
    progress: bool = True, console: Console | None = None,
) -> tuple[SystemConfig, dict[str, Any]]:
    """Choose head, epochs, category models, fusion, regions and query expansion on the held-out AD species
    `val_set`, training on `fit_set` (see `SelectionConfig`; `cache` covers both); returns the chosen recipe
    (selection turned off) and the report of every choice."""
    console = console or Console(quiet=not progress)
    started = time.perf_counter()
    sel = cfg.selection
    categories = categories_of(fit_set)
    labels = np.array(val_set.labels)
    val_categories = np.array([s.category for s in val_set.samples])
    report: dict[str, Any] = {"fit_images": len(fit_set), "fit_species": len(fit_set.classes),
                              "validation_images": len(val_set), "validation_species": len(val_set.classes),
                              "heads": {}, "steps": []}

    best: tuple[float, str, int, dict[str, Any]] | None = None
    for head in sel.heads:
        trial = replace(cfg, head=head, category_epochs=0)
        curve: list[float] = []
        holder: dict[str, nn.Module] = {}

        def score_epoch(record: dict[str, Any], head: str = head, curve: list[float] = curve,
                        holder: dict[str, nn.Module] = holder) -> None:
            nonlocal best
            model = holder["model"]
            embedding = cache.embeddings(model, val_set.samples, device=pick_device(cfg.device))
            curve.append(validation_map(l2_normalize(embedding), labels, val_categories))
            console.log(f"validation: head {head}, epoch {record['epoch']}: mAP {curve[-1]:.4f}")
            if best is None or curve[-1] > best[0]:
                best = (curve[-1], head, record["epoch"], copy.deepcopy(model.state_dict()))

        holder["model"] = unified_model(trial, len(fit_set.classes))
        fit(trial.train_config(epochs=sel.max_epochs), fit_set, progress=progress, model=holder["model"],
            on_epoch_end=score_epoch)
        report["heads"][head] = curve
    score, head, epochs, state = best
    cfg = replace(cfg, head=head, epochs=epochs, category_epochs=0, offtheshelf_weight=0.0, regions=False,
                  qe_top=0, selection=replace(sel, validation_fraction=0.0))
    report["steps"].append({"choice": f"head {head}, {epochs} epochs", "val_mAP": score, "kept": True})
    unified = unified_model(cfg, len(fit_set.classes))
    unified.load_state_dict(state)
    models = {UNIFIED: unified}
    if sel.category_epochs and len(categories) > 1:
        for category in categories:
            models[category] = fit_category_model(cfg.train_config(), unified, fit_set, category, sel.category_epochs,
                                                   progress=progress).model
    if sel.offtheshelf_weights:
        models[OFFTHESHELF] = offtheshelf_model(cfg)
    feats = extract_models(models, val_set.samples, replace(cfg, regions=sel.try_regions).extraction_spec(models),
                           workers=cfg.workers, device=cfg.device)
    if len(feats[UNIFIED]) != len(val_set):
        raise ValueError(f"{len(val_set) - len(feats[UNIFIED])} validation image(s) became unreadable")

    state_now = {"category": False, "weight": 0.0, "regions": False, "qe": 0}

    def features(category: bool, weight: float, regions: bool) -> np.ndarray:
        names = [s.category if category else UNIFIED for s in val_set.samples]
        parts = []
        for part in ("image", "region") if regions else ("image",):
            reference = getattr(feats[OFFTHESHELF], part) if weight else None
            fused = {n: fuse_offtheshelf(getattr(feats[n], part), reference, weight) for n in set(names)}
            parts.append(np.stack([fused[n][i] for i, n in enumerate(names)]))
        return np.concatenate(parts, axis=1)

    def evaluate(**change: Any) -> float:
        s = {**state_now, **change}
        return validation_map(features(s["category"], s["weight"], s["regions"]), labels, val_categories, s["qe"])

    current = report["base_val_mAP"] = evaluate()  # the unified image feature as the search sees it
    options: list[tuple[str, list[tuple[str, Any]]]] = []
    if len(models) > 1 and categories[0] in models:
        options.append(("category", [(f"category models ({sel.category_epochs} epochs from the unified one)", True)]))
    options.append(("weight", [(f"off-the-shelf fusion w={w}", w) for w in sel.offtheshelf_weights]))
    if sel.try_regions:
        options.append(("regions", [("region part", True)]))
    options.append(("qe", [(f"query expansion, top {n}", n) for n in sel.qe_tops]))
    for key, candidates in options:
        scored = [(evaluate(**{key: value}), label, value) for label, value in candidates]
        top = max(scored, key=lambda t: t[0])
        kept = top[0] > current + sel.min_gain
        for val_map, label, _ in scored:
            report["steps"].append({"choice": label, "val_mAP": val_map, "kept": kept and label == top[1]})
        if kept:
            current, state_now[key] = top[0], top[2]
    report["chosen_val_mAP"] = current
    report["seconds"] = time.perf_counter() - started
    chosen = replace(cfg, category_epochs=sel.category_epochs if state_now["category"] else 0,
                     offtheshelf_weight=state_now["weight"], regions=state_now["regions"], qe_top=state_now["qe"])
    return chosen, report


# ------------------------------------------------------------------------------------------------- loading
def load_aux_embeddings(system_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(AD unified Conv-Net features, AD meta-category indices) saved by `train_system`."""
    with np.load(Path(system_dir) / AUX_FILE, allow_pickle=False) as data:
        return data["embedding"], data["category"]


def load_system(system_dir: str | os.PathLike, device: str = "auto") -> System:
    """Load a system saved by `train_system`; `device` overrides where its models run."""
    path = Path(system_dir)
    if not (path / SYSTEM_FILE).is_file():
        raise FileNotFoundError(f"{path} is not an OSFGIR system directory (no {SYSTEM_FILE}); run train_system")
    info = json.loads((path / SYSTEM_FILE).read_text(encoding="utf-8"))
    cfg = load_yaml(SystemConfig, path / CONFIG_FILE, device=device)
    dev = pick_device(device)
    models = {n: load_model(path / "models" / n, str(dev))[0] for n in info["models"]}
    pca_dir = path / "pca"
    files = _file_digests(path, info)
    return System(
        path=path,
        config=cfg,
        categories=info["categories"],
        models=models,
        coarse_pca=FeaturePCA.load(pca_dir / "coarse"),
        part_pcas={n: (FeaturePCA.load(pca_dir / f"{n}-image"),
                       FeaturePCA.load(pca_dir / f"{n}-region") if cfg.regions else None)
                   for n in models if n != OFFTHESHELF},
        classifier=CoarseClassifier.load(path / CLASSIFIER_FILE),
        files=files,
        fingerprint=hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
        hash_model=load_model(path / HASH, str(dev))[0] if cfg.hash_bits else None,
    )


def _file_digests(system_dir: Path, info: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of every file the system wrote (listed in system.json), computed on load, so any retraining or
    edited file changes the fingerprint and an index built before is refused, while files others put in the
    folder do not matter."""
    digests = {}
    for name in info["files"]:
        try:
            digests[name] = file_digest(system_dir / name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{system_dir / name} is missing: the system at {system_dir} is incomplete "
                                    "(copy it again, or retrain it)") from None
    return digests

