"""Index a database with a trained system and answer image queries: `build_index` and `RetrievalEngine`.

An index directory is a `fgia.index.FeatureStore` (plus `engine.json`: the system directory and the database
class names). For every database image it holds, computed offline:

    coarse        coarse_dim PCA feature of the unified model (with the vector index the coarse stage searches)
    coarse_full   the unified model's full embedding (L2-normalised), for the "Coarse full-d" comparison
    fine/<name>   [image, region] fine feature under "unified" and under EVERY category model, so whichever
                  model a query is routed to can re-rank any candidate
    route         the meta-category the coarse classifier predicts for the image (index into categories); the
                  fine stage ranks candidates routed like the query before the others
    box           the discriminative region (x1, y1, x2, y2, original pixels) of the unified model

The store's fingerprint holds the system fingerprint, so an index built by another system is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgia.data.images import load_image
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.extract import FeatureSet
from fgia.index import FeatureStore, IndexMismatchError, StoreRow
from fgia.retrieval.search import Ranking, fine_stage, knn
from fgia.retrieval.system import System, load_system
from fgia.runtime import atomic_write_text
from fgia.train import UNIFIED

ENGINE_FILE = "engine.json"
PIPELINES = ("c2f", "c2f-image", "c2f-unified", "single")
STAGES = ("coarse_feature", "coarse_search", "classifier", "fine_feature", "fine_search", "total")


def fine_name(model: str) -> str:
    """Store array holding the fine features of `model` ("unified" or a meta-category)."""
    return f"fine/{model}"


@dataclass
class SearchResult:
    """One query's answer. `labels` are database class names (None per unlabelled image; None when the
    database has no labels at all); `region_box` is in the query's pixels; `timings_ms` has every stage."""

    ids: list[int]
    distances: list[float]
    paths: list[str]
    labels: list[str | None] | None
    category: str
    region_box: tuple[float, float, float, float] | None
    confidence_map: np.ndarray | None
    timings_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the confidence map as nested lists)."""
        out = {k: getattr(self, k) for k in ("ids", "distances", "paths", "labels", "category", "timings_ms")}
        out["region_box"] = None if self.region_box is None else list(self.region_box)
        out["confidence_map"] = None if self.confidence_map is None else self.confidence_map.tolist()
        return out


@dataclass
class ImageFeatures:
    """Every stage's features of a batch of images (queries or database images).

    Rows are the readable images; `index` gives their positions in the input (None for a single image).
    `fine` maps store array names ("fine/<model>") to fine features; `boxes` are the unified model's regions.
    """

    coarse: np.ndarray
    coarse_full: np.ndarray
    route: np.ndarray
    fine: dict[str, np.ndarray] = field(default_factory=dict)
    index: np.ndarray | None = None
    boxes: np.ndarray | None = None


def image_features(system: System, samples: Sequence[Sample]) -> ImageFeatures:
    """Features of dataset samples under every model of `system`; unreadable images are left out."""
    feats = {name: system.extract(name, samples) for name in system.model_names}
    # An image unreadable for one pass is dropped from all, so every array keeps one row per image.
    readable = feats[UNIFIED].index
    for fs in feats.values():
        readable = np.intersect1d(readable, fs.index)
    feats = {name: _rows(fs, readable) for name, fs in feats.items()}
    full, coarse = system.coarse(feats[UNIFIED].image)
    return ImageFeatures(
        coarse=coarse,
        coarse_full=full,
        route=system.route(coarse),
        fine={fine_name(n): system.fine(n, fs) for n, fs in feats.items()},
        index=readable,
        boxes=feats[UNIFIED].boxes,
    )


@dataclass
class BuildResult:
    """What `build_index` did: images added now, images skipped as unreadable, the store size after."""

    index_dir: Path
    added: int
    skipped: int
    total: int


def build_index(
    system_dir: str | os.PathLike,
    database: FineGrainedDataset,
    index_dir: str | os.PathLike,
    append: bool = False,
    factory: str = "Flat",
    device: str = "auto",
    chunk_size: int = 4096,
) -> BuildResult:
    """Extract and store every stage's features of `database` (see the module docstring).

    `append=True` adds to an existing index built by the same system (refused otherwise); without it an
    existing index is an error. Unreadable images are skipped and counted. Writes are committed per chunk of
    `chunk_size` images, so an interruption keeps every committed chunk.
    """
    if not len(database):
        raise ValueError(f"database {database.name!r} has no images to index")
    system = load_system(system_dir, device)
    out = Path(index_dir)
    fingerprint = _fingerprint(system)
    if append:
        store = FeatureStore.open(out, expected_fingerprint=fingerprint)
        meta = json.loads((out / ENGINE_FILE).read_text(encoding="utf-8"))
    else:
        dims = {"coarse": system.coarse_pca.n_components, "coarse_full": int(system.coarse_pca.input_dim), "route": 1, "box": 4}
        dims |= {fine_name(n): system.fine_dim for n in system.model_names}
        store = FeatureStore.create(out, fingerprint, dims, indexes={"coarse": factory}, device=device)
        meta = {"system_dir": str(Path(system_dir).resolve()), "classes": []}
    classes: list[str] = meta["classes"]
    added = skipped = 0
    for start in range(0, len(database), chunk_size):
        samples = database.samples[start : start + chunk_size]
        rows, arrays, n_skipped = _database_features(system, samples, database.classes, classes)
        skipped += n_skipped
        if rows:
            store.append(rows, arrays, fingerprint=fingerprint)
            added += len(rows)
        meta["classes"] = classes
        atomic_write_text(out / ENGINE_FILE, json.dumps(meta, indent=2))
    return BuildResult(index_dir=out, added=added, skipped=skipped, total=len(store))


def _database_features(
    system: System, samples: Sequence[Sample], source_classes: list[str], classes: list[str]
) -> tuple[list[StoreRow], dict[str, np.ndarray], int]:
    """Rows and arrays for the readable `samples`; extends `classes` with new class names (in place)."""
    f = image_features(system, samples)
    arrays = {"coarse": f.coarse, "coarse_full": f.coarse_full, "route": f.route[:, None].astype(np.float32),
              "box": f.boxes, **f.fine}
    position = {name: i for i, name in enumerate(classes)}
    rows = []
    for i in f.index:
        s = samples[i]
        label = -1
        if s.label >= 0:
            name = source_classes[s.label]
            if name not in position:
                position[name] = len(classes)
                classes.append(name)
            label = position[name]
        rows.append(StoreRow(path=str(Path(s.path).resolve()), category=s.category or "", label=label))
    return rows, arrays, len(samples) - len(f.index)


def _rows(fs: FeatureSet, keep: np.ndarray) -> FeatureSet:
    pos = np.searchsorted(fs.index, keep)
    pick = (lambda a: None if a is None else a[pos])
    return FeatureSet(fs.image[pos], pick(fs.region), pick(fs.boxes), fs.predicted[pos], keep)


def _fingerprint(system: System) -> dict[str, Any]:
    return {
        "system": system.fingerprint,
        "categories": system.categories,
        "coarse_dim": system.coarse_pca.n_components,
        "fine_dim": system.fine_dim,
        "image_size": system.config.image_size,
        "threshold": system.config.threshold,
    }


class RetrievalEngine:
    """A loaded index + its system, answering queries with any pipeline (see `PIPELINES`)."""

    def __init__(self, system: System, store: FeatureStore, classes: list[str]) -> None:
        self.system = system
        self.store = store
        self.classes = classes
        self.rows = store.rows()
        # The fine arrays are read on every query: hold them in memory rather than memory-mapped.
        self.arrays = {name: np.array(store.array(name)) for name in store.dims}
        self.coarse_index = store.index("coarse")  # its positions are image ids: the array covers every image
        self.top_k = system.config.resolve_top_k(len(store))

    @classmethod
    def load(
        cls, index_dir: str | os.PathLike, device: str = "auto", system_dir: str | os.PathLike | None = None
    ) -> RetrievalEngine:
        """Open an index and the system that built it (or `system_dir`); refuses a mismatched pair."""
        path = Path(index_dir)
        meta_path = path / ENGINE_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} is not a retrieval index (no {ENGINE_FILE}); run build_index first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        system = load_system(system_dir or meta["system_dir"], device)
        store = FeatureStore.open(path, expected_fingerprint=_fingerprint(system), device=device)
        if len(store) == 0:
            raise IndexMismatchError(f"index {path} is empty")
        return cls(system, store, meta["classes"])

    def __len__(self) -> int:
        return len(self.rows)

    def stats(self) -> dict[str, Any]:
        """Index size, model, feature dimensions, coarse index factory and K."""
        cfg = self.system.config
        return {
            "images": len(self),
            "labelled": sum(r.label >= 0 for r in self.rows),
            "categories": self.system.categories,
            "backbone": cfg.backbone,
            "image_size": cfg.image_size,
            "dims": self.store.dims,
            "factory": self.coarse_index.factory,
            "top_k": self.top_k,
            "system": str(self.system.path),
            "fingerprint": self.system.fingerprint,
        }

    def image_path(self, image_id: int) -> Path:
        """Path of database image `image_id`."""
        if not 0 <= image_id < len(self.rows):
            raise IndexError(f"image id {image_id} is outside the index (0..{len(self.rows) - 1})")
        return Path(self.rows[image_id].path)

    def labels(self) -> np.ndarray:
        """Database labels (int, -1 unlabelled), indexing `classes`."""
        return np.array([r.label for r in self.rows], dtype=np.int64)

    # Batched path (evaluation) ---------------------------------------------------------------------------
    def query_features(self, samples: Sequence[Sample]) -> ImageFeatures:
        """Features of dataset samples under every model at once (unreadable ones skipped, see `.index`)."""
        return image_features(self.system, samples)

    def rank(
        self,
        qf: ImageFeatures,
        pipeline: str = "c2f",
        query_expansion: bool = False,
        top_k: int | None = None,
        feature: str = "coarse",
    ) -> Ranking:
        """Rankings of a batch of queries; c2f pipelines return the K re-ranked candidates (K = `top_k` or the
        system's), "single" returns `top_k` (default K) hits by exact search on the stored array `feature`."""
        _check_pipeline(pipeline, query_expansion)
        k = top_k or self.top_k
        if pipeline == "single":
            return self._single(qf, feature, k)
        candidates = self._coarse_search(qf.coarse, k)
        return self._fine_search(qf.fine, qf.route, candidates, pipeline, query_expansion)

    def _fine_search(
        self, fine: dict[str, np.ndarray], route: np.ndarray, candidates: np.ndarray, pipeline: str, qe: bool
    ) -> Ranking:
        """Re-rank the coarse candidates: those of the query's predicted meta-category first, each by fine
        distance (with query expansion when `qe`)."""
        query, database, routes = self._fine_inputs(fine, route, pipeline)
        other_category = self.arrays["route"][np.maximum(candidates, 0), 0] != route[:, None]
        qe_top = self.system.config.qe_top if qe else 0
        return fine_stage(query, database, candidates, routes, qe_top, demote=other_category & (candidates >= 0))

    def _single(self, qf: ImageFeatures, feature: str, k: int) -> Ranking:
        if feature == "coarse":
            distances, ids = self._coarse_search_with_distances(qf.coarse, k)
            return Ranking(ids=ids, distances=distances)
        queries = {"coarse_full": qf.coarse_full, **qf.fine}
        if feature not in queries:
            raise ValueError(f"single-stage search needs a feature among {['coarse', *queries]}, got {feature!r}")
        return knn(queries[feature], self.arrays[feature], k)

    def _coarse_search_with_distances(self, coarse: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sq, ids = self.coarse_index.search(coarse, k)
        return np.sqrt(np.maximum(sq, 0)).astype(np.float32), ids

    def _coarse_search(self, coarse: np.ndarray, k: int) -> np.ndarray:
        return self._coarse_search_with_distances(coarse, k)[1]

    def _fine_inputs(
        self, fine: dict[str, np.ndarray], route: np.ndarray, pipeline: str
    ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray], np.ndarray | None]:
        """(query fine features, database fine features, routes) of a c2f pipeline."""
        if pipeline == "c2f-unified":
            return fine[fine_name(UNIFIED)], self.arrays[fine_name(UNIFIED)], None
        names = [fine_name(c) for c in self.system.categories]
        query = np.stack([fine[names[r]][i] for i, r in enumerate(route)]) if len(route) else fine[names[0]][:0]
        database = [self.arrays[n] for n in names]
        if pipeline == "c2f-image":
            half = self.system.fine_dim // 2
            query, database = query[:, :half], [d[:, :half] for d in database]
        return query, database, route

    # Single-query path (CLI, web server, latency) --------------------------------------------------------
    def search(
        self,
        images: Sequence[Image.Image],
        top_k: int = 10,
        pipeline: str = "c2f",
        query_expansion: bool = False,
        feature: str = "coarse",
    ) -> list[SearchResult]:
        """Answer each image in turn, timing every stage; returns the best `top_k` hits per image."""
        _check_pipeline(pipeline, query_expansion)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return [self._search_one(im, top_k, pipeline, query_expansion, feature) for im in images]

    def _search_one(
        self, image: Image.Image, top_k: int, pipeline: str, query_expansion: bool, feature: str
    ) -> SearchResult:
        timer = _StageTimer()
        with timer("coarse_feature"):
            unified = self.system.extract_images(UNIFIED, [image], regions=False)
            full, coarse = self.system.coarse(unified.image)
        with timer("classifier"):
            route = self.system.route(coarse)
        category = self.system.categories[int(route[0])]
        if pipeline == "single":
            fine_model = feature.removeprefix("fine/") if feature.startswith("fine/") else None
            fine, fs = self._query_fine(fine_model, image, timer)
            with timer("coarse_search"):
                qf = ImageFeatures(coarse=coarse, coarse_full=full, route=route, fine=fine)
                ranking = self.rank(qf, "single", top_k=top_k, feature=feature)
        else:
            with timer("coarse_search"):
                candidates = self._coarse_search(coarse, self.top_k)
            fine, fs = self._query_fine(UNIFIED if pipeline == "c2f-unified" else category, image, timer)
            with timer("fine_search"):
                ranking = self._fine_search(fine, route, candidates, pipeline, query_expansion)
        timer.finish()
        ids, dist = ranking.row(0)
        ids, dist = ids[:top_k], dist[:top_k]
        rows = [self.rows[i] for i in ids]
        has_labels = bool(self.classes)
        return SearchResult(
            ids=[int(i) for i in ids],
            distances=[float(d) for d in dist],
            paths=[r.path for r in rows],
            labels=[self.classes[r.label] if r.label >= 0 else None for r in rows] if has_labels else None,
            category=category,
            region_box=None if fs is None else tuple(float(v) for v in fs.boxes[0]),
            confidence_map=None if fs is None else fs.maps[0],
            timings_ms=timer.ms,
        )

    def _query_fine(
        self, model: str | None, image: Image.Image, timer: _StageTimer
    ) -> tuple[dict[str, np.ndarray], FeatureSet | None]:
        """The fine feature of one query image under `model` (nothing when None)."""
        if model is None:
            return {}, None
        with timer("fine_feature"):
            fs = self.system.extract_images(model, [image], regions=True)
            return {fine_name(model): self.system.fine(model, fs)}, fs


def search_files(
    index_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    top_k: int = 10,
    pipeline: str = "c2f",
    query_expansion: bool = False,
    device: str = "auto",
) -> list[SearchResult]:
    """`fgia search`: load the index and answer each image file (an unreadable file raises ImageLoadError)."""
    engine = RetrievalEngine.load(index_dir, device=device)
    return engine.search([load_image(p) for p in images], top_k, pipeline, query_expansion)


def _check_pipeline(pipeline: str, query_expansion: bool) -> None:
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {PIPELINES}")
    if pipeline == "single" and query_expansion:
        raise ValueError("query expansion applies to the coarse-to-fine pipelines only")


class _StageTimer:
    """Wall-clock ms per stage; stages a pipeline skips read 0."""

    def __init__(self) -> None:
        self.ms = {s: 0.0 for s in STAGES}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.ms[stage] += (time.perf_counter() - t0) * 1000.0

    def finish(self) -> None:
        self.ms["total"] = (time.perf_counter() - self._start) * 1000.0
