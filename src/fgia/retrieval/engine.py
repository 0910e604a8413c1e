"""Index a database with a trained system and answer image queries: `build_index` and `RetrievalEngine`.

An index directory is a `fgia.index.FeatureStore` (plus `engine.json`: the system directory and the database
class names). For every database image it holds, computed offline in one pass of the system's models:

    coarse        coarse_dim PCA of the unified model's Conv-Net feature (with the vector index the coarse
                  stage searches)
    unified       the unified model's whole embedding, L2-normalised (the "Unified" single-stage row)
    fine/<name>   [image, region] fine feature under "unified" and, with category models, under EVERY category
                  model, so whichever model a query is routed to can re-rank any candidate
    route         the meta-category the coarse classifier predicts for the image (index into categories); the
                  fine stage ranks candidates routed like the query before the others
    box           the discriminative region (x1, y1, x2, y2, original pixels) of the unified model
    codes/<bits>  with `codes` (a system trained with `hash_bits`): the hashing model's binary code (+-1), with a
                  FAISS binary index ("BFlat") for Hamming search: the "hash" pipeline, or "c2f-hash", where it
                  replaces the coarse stage of coarse-to-fine

Every pipeline (`Pipeline`) runs through `RetrievalEngine.rank` on a batch of query features, so evaluation,
the CLI, the server and the benchmarks share one code path. Query expansion (the paper's "average the top-5
and search again") averages the query with its top hits' features and runs the whole search again with the
expanded query: for coarse-to-fine, the coarse stage too, so the expanded query can reach images the first
candidate list missed. The store's fingerprint holds the system fingerprint, so an index built by another
system is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgia.data.images import load_image
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.binary import binarize
from fgia.features.extract import FeatureSet
from fgia.features.pca import l2_normalize
from fgia.index import FeatureStore, IndexMismatchError, StoreRow
from fgia.retrieval.search import Ranking, average_query_expansion, knn, rerank
from fgia.retrieval.system import HASH, System, load_system
from fgia.runtime import atomic_write_text
from fgia.train import UNIFIED

ENGINE_FILE = "engine.json"
STAGES = ("features", "coarse_search", "classifier", "fine_search", "total")


class Pipeline(str, Enum):
    """The retrieval pipelines; the c2f ones re-rank the coarse stage's top-K candidates with fine features."""

    COARSE = "coarse"  # the coarse_dim feature, one exact search over the whole database
    COARSE_FULL = "coarse-full"  # the unified model's full Conv-Net feature, likewise
    UNIFIED = "unified"  # the unified model's whole embedding, likewise
    C2F_IMAGE = "c2f-image"  # coarse-to-fine with the whole-image part of the routed model's fine feature
    C2F_UNIFIED = "c2f-unified"  # coarse-to-fine with the unified model's fine feature
    C2F = "c2f"  # coarse-to-fine with the routed (category-specific) model's fine feature: the system's pipeline
    HASH = "hash"  # the binary code, one Hamming search over the whole database (an index built with codes)
    C2F_HASH = "c2f-hash"  # coarse-to-fine whose candidates are the Hamming search's top-K, re-ranked like c2f

    @property
    def is_c2f(self) -> bool:
        return self.value.startswith("c2f")

    @classmethod
    def parse(cls, name: Pipeline | str) -> Pipeline:
        """The pipeline called `name`, or a clear error listing the known ones."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown pipeline {name!r}; choose one of {PIPELINES}") from None


PIPELINES = tuple(p.value for p in Pipeline)


def fine_name(model: str) -> str:
    """Store array holding the fine features of `model` ("unified" or a meta-category)."""
    return f"fine/{model}"


def codes_name(bits: int) -> str:
    """Store array holding the `bits`-bit binary codes."""
    return f"codes/{bits}"


@dataclass
class SearchResult:
    """One query's answer. `labels` are database class names (None per unlabelled image; None when the
    database has no labels at all); `region_box` is in the query's pixels; `timings_ms` has every stage of the
    call that answered it (a batch shares one call)."""

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

    Rows are the readable images; `index` gives their positions in the input. `fine` maps store array names
    ("fine/<model>") to fine features; `boxes` and `maps` are the unified model's regions and confidence maps.
    """

    coarse: np.ndarray
    unified: np.ndarray
    route: np.ndarray
    fine: dict[str, np.ndarray] = field(default_factory=dict)
    index: np.ndarray | None = None
    boxes: np.ndarray | None = None
    maps: np.ndarray | None = None
    codes: np.ndarray | None = None  # the hashing model's relaxed codes of every length (its embedding)

    def __len__(self) -> int:
        return len(self.coarse)


def image_features(system: System, samples: Sequence[Sample] | None = None,
                   images: Sequence[Image.Image] | None = None, progress: bool = False) -> ImageFeatures:
    """Features of dataset samples (unreadable ones left out) or in-memory images under every model of
    `system`, in one pass of its models."""
    return stage_features(system, system.features(samples, images, progress=progress))


def stage_features(system: System, feats: dict[str, FeatureSet]) -> ImageFeatures:
    """Every stage's features (coarse, route, fine) from the models' extracted features."""
    _, coarse = system.coarse(feats)
    unified: FeatureSet = feats[UNIFIED]
    return ImageFeatures(
        coarse=coarse,
        unified=l2_normalize(unified.image),
        route=system.route(coarse),
        fine={fine_name(n): system.fine(n, feats) for n in system.fine_models},
        index=unified.index,
        boxes=unified.boxes,
        maps=unified.maps,
        codes=feats[HASH].image if HASH in feats else None,
    )


def code_slice(system: System, bits: int) -> slice:
    """Where the `bits`-bit code lies in the system's hashing model's relaxed codes (an error when it has none)."""
    model = system.hash_model
    if model is None or bits not in model.code_slices:
        have = list(model.code_slices) if model is not None else "none (train the system with hash_bits)"
        raise ValueError(f"the system has no {bits}-bit hashing model; its code lengths: {have}")
    return model.code_slices[bits]


def binary_codes(system: System, relaxed: np.ndarray, bits: int) -> np.ndarray:
    """The +-1 `bits`-bit codes within a hashing model's relaxed codes of every length."""
    return binarize(relaxed[:, code_slice(system, bits)])


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
    progress: bool = False,
    codes: int | None = None,
    hash_factory: str = "BFlat",
) -> BuildResult:
    """Extract and store every stage's features of `database` (see the module docstring).

    `append=True` adds to an existing index built by the same system (refused otherwise); without it an
    existing index is an error. Unreadable images are skipped and counted. Writes are committed per chunk of
    `chunk_size` images, so an interruption keeps every committed chunk. `codes`: also store the system's
    `codes`-bit binary codes with a `hash_factory` binary index (an appended index keeps the lengths it has).
    """
    if not len(database):
        raise ValueError(f"database {database.name!r} has no images to index")
    system = load_system(system_dir, device)
    out = Path(index_dir)
    fingerprint = _fingerprint(system)
    if append:
        store = FeatureStore.open(out, expected_fingerprint=fingerprint)
        meta = json.loads((out / ENGINE_FILE).read_text(encoding="utf-8"))
        if codes and codes != meta.get("codes"):
            held = meta.get("codes") or "no"
            raise IndexMismatchError(f"index {out} holds {held} binary codes, not {codes}-bit ones")
    else:
        dims = {"coarse": system.coarse_pca.n_components, "unified": system.models[UNIFIED].embedding_dim,
                "route": 1, "box": 4}
        dims |= {fine_name(n): system.fine_dim for n in system.fine_models}
        indexes = {"coarse": factory}
        if codes:
            code_slice(system, codes)  # fail before extracting anything
            dims[codes_name(codes)], indexes[codes_name(codes)] = codes, hash_factory
        store = FeatureStore.create(out, fingerprint, dims, indexes=indexes, device=device)
        meta = {"system_dir": str(Path(system_dir).resolve()), "classes": [], "codes": codes}
    classes: list[str] = meta["classes"]
    added = skipped = 0
    for start in range(0, len(database), chunk_size):
        samples = database.samples[start : start + chunk_size]
        rows, arrays, n_skipped = _database_features(system, samples, database.classes, classes, progress,
                                                     meta.get("codes"))
        skipped += n_skipped
        if rows:
            store.append(rows, arrays, fingerprint=fingerprint)
            added += len(rows)
        meta["classes"] = classes
        atomic_write_text(out / ENGINE_FILE, json.dumps(meta, indent=2))
    return BuildResult(index_dir=out, added=added, skipped=skipped, total=len(store))


def _database_features(
    system: System, samples: Sequence[Sample], source_classes: list[str], classes: list[str], progress: bool,
    codes: int | None = None,
) -> tuple[list[StoreRow], dict[str, np.ndarray], int]:
    """Rows and arrays for the readable `samples` (with `codes`-bit codes when given); extends `classes` with new
    class names (in place)."""
    f = image_features(system, samples, progress=progress)
    boxes = f.boxes if f.boxes is not None else np.zeros((len(f), 4), np.float32)
    arrays = {"coarse": f.coarse, "unified": f.unified, "route": f.route[:, None].astype(np.float32),
              "box": boxes, **f.fine}
    if codes:
        arrays[codes_name(codes)] = binary_codes(system, f.codes, codes)
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
    """A loaded index + its system, answering queries with any pipeline (see `Pipeline`)."""

    def __init__(self, system: System, store: FeatureStore, classes: list[str]) -> None:
        self.system = system
        self.store = store
        self.classes = classes
        self.rows = store.rows()
        # Every search reads these arrays: hold them in memory rather than memory-mapped.
        self.arrays = {name: np.array(store.array(name)) for name in store.dims}
        self.routes = self.arrays["route"][:, 0].astype(np.int64)
        self.coarse_index = store.index("coarse")  # its positions are image ids: the array covers every image
        self.top_k = system.config.resolve_top_k(len(store))
        self.code_bits = next((int(n.split("/")[1]) for n in store.dims if n.startswith("codes/")), None)

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
        """Index size, model, feature dimensions, coarse index factory, K and the default pipeline."""
        cfg = self.system.config
        return {
            "images": len(self),
            "labelled": sum(r.label >= 0 for r in self.rows),
            "categories": self.system.categories,
            "backbone": cfg.backbone,
            "image_size": cfg.image_size,
            "dims": self.store.dims,
            "factory": self.coarse_index.factory,
            "codes": self.code_bits,
            "top_k": self.top_k,
            "query_expansion": cfg.qe_top,
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

    def query_features(self, samples: Sequence[Sample] | None = None, images: Sequence[Image.Image] | None = None,
                       progress: bool = False) -> ImageFeatures:
        """Features of dataset samples or in-memory images under every model at once (unreadable samples skipped,
        see `.index`)."""
        return image_features(self.system, samples, images, progress)

    # ------------------------------------------------------------------------------------------- ranking
    def rank(self, qf: ImageFeatures, pipeline: Pipeline | str = Pipeline.C2F, query_expansion: bool = False,
             top_k: int | None = None, full: bool = False, timer: StageTimer | None = None) -> Ranking:
        """Rankings of a batch of queries with one pipeline (query expansion with the system's `qe_top` hits).

        Single-stage pipelines search the whole database exactly; c2f pipelines re-rank the coarse stage's K
        candidates (K = `top_k` or the system's), those routed like the query first. With `full`, every ranking
        covers the whole database: c2f appends the images outside the candidates in coarse order (what mAP over
        the whole database needs). `timer` accumulates the coarse and fine search times."""
        pipeline = Pipeline.parse(pipeline)
        timer = timer or StageTimer()
        qe_top = self.system.config.qe_top if query_expansion else 0
        if query_expansion and not qe_top:
            raise ValueError("query expansion needs the system's qe_top >= 1")
        k = len(self) if full else top_k or self.top_k
        if pipeline is Pipeline.HASH:
            query, database = self._first_stage(qf, pipeline)
            with timer("coarse_search"):
                ranking = self._search_first(query, k, hashed=True)
                if qe_top:
                    expanded = average_query_expansion(query, database, ranking.ids[:, :qe_top])
                    ranking = self._search_first(expanded, k, hashed=True)
            return ranking
        if not pipeline.is_c2f:
            query, database = self._single_stage(qf, pipeline)
            with timer("coarse_search"):
                ranking = knn(query, database, k)
                if qe_top:
                    ranking = knn(average_query_expansion(query, database, ranking.ids[:, :qe_top]), database, k)
            return ranking
        k_coarse = top_k or self.top_k
        hashed = pipeline is Pipeline.C2F_HASH
        first, first_database = self._first_stage(qf, pipeline)
        query, databases = self._fine_inputs(qf, pipeline)
        ranking = self._c2f(first, query, databases, qf.route, k_coarse, full, timer, hashed)
        if qe_top:
            hits = ranking.ids[:, :qe_top]
            with timer("fine_search"):
                first = average_query_expansion(first, first_database, hits)
                query = np.stack([average_query_expansion(q[None], databases[r], h[None])[0]
                                  for q, r, h in zip(query, qf.route, hits)]) if len(query) else query
            ranking = self._c2f(first, query, databases, qf.route, k_coarse, full, timer, hashed)
        return ranking

    def _first_stage(self, qf: ImageFeatures, pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
        """(query, database) features of the stage that picks candidates: the binary codes for the hash pipelines,
        else the coarse feature."""
        if pipeline not in (Pipeline.HASH, Pipeline.C2F_HASH):
            return qf.coarse, self.arrays["coarse"]
        if self.code_bits is None:
            raise ValueError(f"pipeline {pipeline.value!r} needs an index built with binary codes (fgia index "
                             "--codes BITS, with a system trained with hash_bits)")
        return binary_codes(self.system, qf.codes, self.code_bits), self.arrays[codes_name(self.code_bits)]

    def _search_first(self, query: np.ndarray, k: int, hashed: bool) -> Ranking:
        """The first stage's k nearest: Hamming distances in the binary code index, or Euclidean ones in the
        coarse index."""
        if hashed:
            distances, ids = self.store.index(codes_name(self.code_bits)).search(query, k)
            return Ranking(ids=ids, distances=distances)
        sq, ids = self.coarse_index.search(query, k)
        return Ranking(ids=ids, distances=np.sqrt(np.maximum(sq, 0)).astype(np.float32))

    def _single_stage(self, qf: ImageFeatures, pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
        if pipeline is Pipeline.COARSE:
            return qf.coarse, self.arrays["coarse"]
        if pipeline is Pipeline.UNIFIED:
            return qf.unified, self.arrays["unified"]
        dim = getattr(self.system.models[UNIFIED], "conv_feature_dim", qf.unified.shape[1])
        return l2_normalize(qf.unified[:, :dim]), l2_normalize(self.arrays["unified"][:, :dim])

    def _fine_inputs(self, qf: ImageFeatures, pipeline: Pipeline) -> tuple[np.ndarray, list[np.ndarray]]:
        """(query fine features, database fine features per meta-category) of a c2f pipeline."""
        names = [UNIFIED if pipeline is Pipeline.C2F_UNIFIED else self.system.model_for(c)
                 for c in range(len(self.system.categories))]
        query = np.stack([qf.fine[fine_name(names[r])][i] for i, r in enumerate(qf.route)]) if len(qf) else \
            qf.fine[fine_name(UNIFIED)][:0]
        databases = [self.arrays[fine_name(n)] for n in names]
        if pipeline is Pipeline.C2F_IMAGE:
            part = self.system.part_pcas[UNIFIED][0].n_components
            query, databases = query[:, :part], [d[:, :part] for d in databases]
        return query, databases

    def _c2f(self, first: np.ndarray, fine: np.ndarray, databases: list[np.ndarray], route: np.ndarray,
             k: int, full: bool, timer: StageTimer, hashed: bool = False) -> Ranking:
        """The first stage's top-K (coarse, or Hamming when `hashed`), re-ranked by fine distance (candidates
        routed like the query first); with `full`, the rest of the database follows in first-stage order."""
        with timer("coarse_search"):
            found = self._search_first(first, len(self) if full else k, hashed)
            candidates, rest = found.ids[:, :k], found.ids[:, k:]
        with timer("fine_search"):
            other = (self.routes[np.maximum(candidates, 0)] != route[:, None]) & (candidates >= 0)
            ranking = rerank(fine, databases, candidates, route, demote=other)
        if not full:
            return ranking
        return Ranking(ids=np.concatenate([ranking.ids, rest], axis=1),
                       distances=np.concatenate([ranking.distances, found.distances[:, k:]], axis=1))

    # ------------------------------------------------------------------------------------------- answering
    def search(
        self,
        images: Sequence[Image.Image],
        top_k: int = 10,
        pipeline: Pipeline | str = Pipeline.C2F,
        query_expansion: bool = False,
    ) -> list[SearchResult]:
        """Answer a batch of query images (one forward pass, one `rank`), timing every stage; returns the best
        `top_k` hits per image."""
        pipeline = Pipeline.parse(pipeline)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not images:
            return []
        timer = StageTimer()
        with timer("features"):
            feats = self.system.features(images=images)
        with timer("classifier"):
            qf = stage_features(self.system, feats)
        ranking = self.rank(qf, pipeline, query_expansion, top_k=None if pipeline.is_c2f else top_k, timer=timer)
        timer.finish()
        return [self._result(ranking, i, qf, top_k, timer.ms) for i in range(len(images))]

    def _result(self, ranking: Ranking, i: int, qf: ImageFeatures, top_k: int, timings: dict[str, float]) -> SearchResult:
        ids, dist = ranking.row(i)
        ids, dist = ids[:top_k], dist[:top_k]
        rows = [self.rows[j] for j in ids]
        has_labels = bool(self.classes)
        return SearchResult(
            ids=[int(j) for j in ids],
            distances=[float(d) for d in dist],
            paths=[r.path for r in rows],
            labels=[self.classes[r.label] if r.label >= 0 else None for r in rows] if has_labels else None,
            category=self.system.categories[int(qf.route[i])],
            region_box=None if qf.boxes is None else tuple(float(v) for v in qf.boxes[i]),
            confidence_map=None if qf.maps is None else qf.maps[i],
            timings_ms=dict(timings),
        )


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


class StageTimer:
    """Wall-clock ms per stage (`STAGES`); stages a pipeline skips read 0."""

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
