"""The trained OSFGIR system: unified + per-category CN-Nets, PCAs and the coarse classifier, in one directory.

Layout of a system directory (everything written by `train_system`, read by `load_system`):

    system.yaml              the resolved SystemConfig
    system.json              categories, feature dimensions, training summary, the files the system wrote
    models/<name>/           one trained model per name: "unified" and every meta-category
    pca/coarse.*             PCA of the unified embedding to `coarse_dim` (the coarse feature)
    pca/<name>-image.*       PCA of model <name>'s whole-image embedding to the part dimension
    pca/<name>-region.*      ... and of its region embedding
    classifier.npz           logistic regression on the coarse feature -> meta-category
    aux_unified.npz          AD's unified embeddings and meta-category indices (for the classifier table)

Feature conventions (shared by indexing and querying, so they live here only): embeddings are L2-normalised
before PCA and every PCA output is L2-normalised again (`FeaturePCA` does both). The fine feature of an image
under model m is [image part, region part] (2 x part_dim), so both parts weigh the same in the Euclidean re-ranking.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn
from PIL import Image
from sklearn.linear_model import LogisticRegression

from fgia.config import load_yaml, save_yaml
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.extract import FeatureSet, extract_features, extract_from_images
from fgia.features.pca import FeaturePCA, l2_normalize
from fgia.index import file_digest
from fgia.models import load_model
from fgia.runtime import atomic_path, atomic_write_text, output_folder, pick_device, seed_everything
from fgia.train import UNIFIED, TrainConfig, fit_per_category

SYSTEM_FILE = "system.json"
CONFIG_FILE = "system.yaml"
CLASSIFIER_FILE = "classifier.npz"
AUX_FILE = "aux_unified.npz"
SYSTEM_KIND = "system"


@dataclass
class SystemConfig:
    """How to train and run an OSFGIR system.

    `top_k`: coarse candidates re-ranked by the fine stage; with `top_k_fraction` set, K is that fraction of
    the database instead (at least 1). `threshold`: the confidence-map threshold of the discriminative region.
    `classifier_dims`: coarse-feature dimensions for the classifier-accuracy table (0 = full embedding).
    `category_epochs`: None trains each category-specific model from `weights` for `epochs` (the paper);
    a number starts it from the trained unified model restricted to the category's species and fine-tunes it
    for that many epochs (cheaper, and better when AD has few images per category).
    `train_options`: any other `TrainConfig` field (optimizer, warmup_epochs, backbone_lr_scale, ...).
    """

    backbone: str = "resnet18"
    weights: str | None = None
    image_size: int = 64
    epochs: int = 2
    category_epochs: int | None = None
    batch_size: int = 32
    lr: float = 0.01
    head_dim: int = 512
    coarse_dim: int = 32
    part_dim: int = 512
    top_k: int = 1000
    top_k_fraction: float | None = None
    threshold: float = 0.5
    region_zoom: float = 1.0
    qe_top: int = 5
    classifier_dims: tuple[int, ...] = (8, 16, 32, 64, 128, 0)
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    train_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("coarse_dim", "part_dim", "top_k", "image_size", "epochs", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.category_epochs is not None and self.category_epochs < 1:
            raise ValueError(f"category_epochs must be >= 1 or None, got {self.category_epochs}")
        if self.top_k_fraction is not None and not 0.0 < self.top_k_fraction <= 1.0:
            raise ValueError(f"top_k_fraction must be in (0, 1], got {self.top_k_fraction}")
        if self.region_zoom < 1.0:
            raise ValueError(f"region_zoom must be >= 1, got {self.region_zoom}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.qe_top < 0:
            raise ValueError(f"qe_top must be >= 0 (0 disables query expansion), got {self.qe_top}")

    def resolve_top_k(self, database_size: int) -> int:
        """K for a database of `database_size` images."""
        if self.top_k_fraction is not None:
            return max(1, round(self.top_k_fraction * database_size))
        return self.top_k

    def extraction_options(self, regions: bool) -> dict[str, Any]:
        """`extract_features` / `extract_from_images` options shared by AD fitting, indexing and querying."""
        return {"image_size": self.image_size, "regions": regions, "threshold": self.threshold,
                "device": self.device, "region_zoom": self.region_zoom}

    def train_config(self) -> TrainConfig:
        """The TrainConfig every CN-Nets of the system is trained with."""
        options = {
            "model": "cnnets",
            "model_kwargs": {"backbone": self.backbone, "weights": self.weights, "head_dim": self.head_dim},
            "image_size": self.image_size,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup_epochs": min(1.0, float(self.epochs)),
            "seed": self.seed,
            "device": self.device,
            "workers": self.workers,
            **self.train_options,
        }
        return TrainConfig(**options)


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


@dataclass
class System:
    """A loaded system: models, PCAs and classifier, with the feature functions indexing and querying share."""

    path: Path
    config: SystemConfig
    categories: list[str]
    models: dict[str, nn.Module]
    coarse_pca: FeaturePCA
    part_pcas: dict[str, tuple[FeaturePCA, FeaturePCA]]
    classifier: CoarseClassifier
    files: dict[str, str]  # the files the system wrote -> their SHA-256 now
    fingerprint: str

    @property
    def model_names(self) -> list[str]:
        """"unified" then the meta-categories, in routing order."""
        return [UNIFIED, *self.categories]

    def extract(self, name: str, samples: Sequence[Sample], regions: bool = True) -> FeatureSet:
        """Features of model `name` for dataset samples (unreadable images skipped, see `FeatureSet.index`)."""
        options = self.config.extraction_options(regions)
        return extract_features(self.models[name], samples, workers=self.config.workers, **options)

    def extract_images(self, name: str, images: Sequence[Image.Image], regions: bool = True) -> FeatureSet:
        """Features of model `name` for in-memory images, with the confidence maps when `regions`."""
        options = self.config.extraction_options(regions)
        return extract_from_images(self.models[name], images, keep_maps=regions, **options)

    def coarse(self, unified_embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(full-d coarse feature, `coarse_dim` coarse feature) from the unified model's embedding."""
        return l2_normalize(unified_embedding), self.coarse_pca.transform(unified_embedding)

    def route(self, coarse: np.ndarray) -> np.ndarray:
        """Predicted meta-category index (into `categories`) per coarse feature."""
        return self.classifier.predict(coarse)

    def fine(self, name: str, features: FeatureSet) -> np.ndarray:
        """[image, region] fine feature of model `name` (see the module docstring)."""
        image_pca, region_pca = self.part_pcas[name]
        return np.concatenate([image_pca.transform(features.image), region_pca.transform(features.region)], axis=1)

    @property
    def fine_dim(self) -> int:
        image_pca, region_pca = self.part_pcas[UNIFIED]
        return image_pca.n_components + region_pca.n_components


def train_system(
    auxiliary: FineGrainedDataset, cfg: SystemConfig, out_dir: str | os.PathLike, progress: bool = True,
    force: bool = False,
) -> Path:
    """Train the whole system on the auxiliary set AD and save it in `out_dir`; returns `out_dir`.

    Trains the unified CN-Nets and one per meta-category, extracts AD features with each, fits the coarse
    PCA + classifier on the unified embeddings and the per-part PCAs of every model. The system is written
    beside `out_dir` and moved into place when complete; an existing system (whose indexes would stop loading)
    or a non-empty folder is refused unless `force` (see `fgia.runtime.output_folder`).
    """
    with output_folder(out_dir, SYSTEM_KIND, force=force, replace_own=False) as out:
        _train_system(auxiliary, cfg, out, progress)
    return Path(out_dir)


def _train_system(auxiliary: FineGrainedDataset, cfg: SystemConfig, out: Path, progress: bool) -> None:
    categories = sorted({s.category for s in auxiliary.samples if s.category is not None})
    if not categories:
        raise ValueError(f"{auxiliary.name!r} has no meta-categories: every sample needs `category` for routing")
    seed_everything(cfg.seed)
    save_yaml(cfg, out / CONFIG_FILE)
    results = fit_per_category(cfg.train_config(), auxiliary, out / "models", progress=progress,
                               category_epochs=cfg.category_epochs)
    models = {name: results[name].model for name in [UNIFIED, *categories]}
    (out / "pca").mkdir(parents=True, exist_ok=True)

    options = cfg.extraction_options(regions=True)
    aux_features = {}
    for name, model in models.items():
        subset = auxiliary if name == UNIFIED else auxiliary.filter(lambda s, c=name: s.category == c)
        aux_features[name] = extract_features(model, subset.samples, workers=cfg.workers, **options)
    # Every model's fine features must share one dimension, so PCA sizes are capped by the smallest AD subset.
    part_dim = min(cfg.part_dim, *(min(fs.image.shape) for fs in aux_features.values()))
    for name, fs in aux_features.items():
        for part in ("image", "region"):
            FeaturePCA(part_dim).fit(getattr(fs, part)).save(out / "pca" / f"{name}-{part}")

    read = aux_features[UNIFIED].index
    targets = np.array([categories.index(auxiliary.samples[i].category) for i in read])
    coarse_pca, classifier = fit_coarse(aux_features[UNIFIED].image, targets, cfg.coarse_dim, cfg.seed)
    coarse_pca.save(out / "pca" / "coarse")
    with atomic_path(out / AUX_FILE) as tmp, tmp.open("wb") as f:
        np.savez(f, embedding=aux_features[UNIFIED].image, category=targets)
    classifier.save(out / CLASSIFIER_FILE)
    info = {
        "categories": categories,
        "coarse_dim": coarse_pca.n_components,
        "part_dim": part_dim,
        "auxiliary_images": len(auxiliary),
        "train_history": {n: r.history[-1] if r.history else {} for n, r in results.items()},
        "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != "."),
    }
    atomic_write_text(out / SYSTEM_FILE, json.dumps(info, indent=2))


def load_aux_embeddings(system_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(AD unified embeddings, AD meta-category indices) saved by `train_system`."""
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
    names = [UNIFIED, *info["categories"]]
    files = _file_digests(path, info)
    return System(
        path=path,
        config=cfg,
        categories=info["categories"],
        models={n: load_model(path / "models" / n, str(dev))[0] for n in names},
        coarse_pca=FeaturePCA.load(path / "pca" / "coarse"),
        part_pcas={n: (FeaturePCA.load(path / "pca" / f"{n}-image"), FeaturePCA.load(path / "pca" / f"{n}-region"))
                   for n in names},
        classifier=CoarseClassifier.load(path / CLASSIFIER_FILE),
        files=files,
        fingerprint=hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
    )


def _file_digests(system_dir: Path, info: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of every file the system wrote (listed in system.json; systems saved before that list existed:
    every file but system.json), computed on load, so any retraining or edited file changes the fingerprint
    and an index built before is refused, while files others put in the folder do not matter."""
    names = info.get("files") or sorted(p.relative_to(system_dir).as_posix() for p in system_dir.rglob("*")
                                        if p.is_file() and p.name != SYSTEM_FILE)
    digests = {}
    for name in names:
        try:
            digests[name] = file_digest(system_dir / name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{system_dir / name} is missing: the system at {system_dir} is incomplete "
                                    "(copy it again, or retrain it)") from None
    return digests
