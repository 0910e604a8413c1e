"""Index a database with a trained system and answer image queries: `build_index` and `RetrievalEngine`.

An index directory is a `fgia.index.FeatureStore` whose attributes, committed with every generation, hold the
system's location and the database class names. For every database image it holds, computed offline:

    coarse        coarse_dim PCA feature of the unified model (with the vector index the coarse stage searches)
    coarse_full   the unified model's full embedding (L2-normalised), for the "Coarse full-d" comparison
    fine/<name>   [image, region] fine feature under "unified" and under EVERY category model, so whichever
                  model a query is routed to can re-rank any candidate
    route         the meta-category the coarse classifier predicts for the image (index into categories); the
                  fine stage ranks candidates routed like the query before the others
    box           the discriminative region (x1, y1, x2, y2, original pixels) of the unified model

The store's fingerprint holds the system fingerprint, so an index built by another system is refused. Image
and system paths are stored relative to the index (with the absolute locations as a fallback), so an index
moved together with its images, or alone, still works.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgia.data.images import ImageLoadError, load_image
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.extract import FeatureSet
from fgia.index import CorruptIndexError, FeatureStore, IndexMismatchError, StoreRow, file_digest
from fgia.index.store import MANIFEST
from fgia.retrieval.search import Ranking, fine_stage, knn
from fgia.retrieval.system import SYSTEM_FILE, System, load_system
from fgia.runtime import OUTPUT_MARKER, clear_folder, output_folder, output_kind
from fgia.train import UNIFIED

INDEX_KIND = "index"
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
    """What `build_index` did: images added now, images skipped as unreadable, images skipped as already in the
    index (same path or same content), the store size after."""

    index_dir: Path
    added: int
    skipped: int
    total: int
    duplicates: int = 0


def build_index(
    system_dir: str | os.PathLike,
    database: FineGrainedDataset,
    index_dir: str | os.PathLike,
    append: bool = False,
    factory: str = "Flat",
    device: str = "auto",
    chunk_size: int = 4096,
    force: bool = False,
) -> BuildResult:
    """Extract and store every stage's features of `database` (see the module docstring).

    A new index is built beside `index_dir` and moved into place when complete: a build that fails leaves
    nothing, one that is killed is resumed by the next build of the same `index_dir`. A folder that is not
    empty is refused (an index too: use `append`) unless `force`, which replaces it when the new one is
    complete. `append=True` adds to an existing index built by the same system; images already in it (same
    path or same content) are skipped and counted. Unreadable images are skipped and counted. Each chunk of
    `chunk_size` images is committed (with the class names it uses) as one generation of the store.
    """
    if not len(database):
        raise ValueError(f"database {database.name!r} has no images to index")
    system = load_system(system_dir, device)
    out = Path(index_dir)
    if append:
        if output_kind(out) != INDEX_KIND or not (out / MANIFEST).is_file():
            raise FileNotFoundError(f"{out} holds no index to append to; build one first (without --append)")
        store = FeatureStore.open(out, device=device)
        _check_system(store, system, out)
        return _add(system, store, database, chunk_size)
    with output_folder(out, INDEX_KIND, force=force, replace_own=False, manifests=[MANIFEST], resume=True) as stage:
        store = _resumable(stage, system, factory, device)
        if store is None:
            dims = {"coarse": system.coarse_pca.n_components, "coarse_full": int(system.coarse_pca.input_dim),
                    "route": 1, "box": 4}
            dims |= {fine_name(n): system.fine_dim for n in system.model_names}
            store = FeatureStore.create(stage, _fingerprint(system), dims, indexes={"coarse": factory}, device=device,
                                        attributes={"classes": [], "system": _system_location(system, stage),
                                                    "system_files": system.files})
        result = _add(system, store, database, chunk_size)
        if not len(store):
            raise ValueError(_none_readable(database))
    return replace(result, index_dir=out)


def _resumable(stage: Path, system: System, factory: str, device: str) -> FeatureStore | None:
    """The store a killed build of the same index left in `stage`, when it can go on; else None (and `stage` is
    emptied: everything in it is what that build wrote)."""
    if (stage / MANIFEST).is_file():
        try:
            store = FeatureStore.open(stage, expected_fingerprint=_fingerprint(system), device=device)
            if store.manifest["arrays"]["coarse"]["index"]["factory"] == factory:
                return store
        except (CorruptIndexError, IndexMismatchError, ValueError, KeyError):
            pass
    clear_folder(stage, keep={OUTPUT_MARKER})
    return None


def _add(system: System, store: FeatureStore, database: FineGrainedDataset, chunk_size: int) -> BuildResult:
    """Append the images of `database` not in `store` yet (by path and by content), one commit per chunk."""
    known_paths = {row.path for row in store.rows()}
    known_digests = {row.digest for row in store.rows()} - {""}
    classes = list(store.attributes["classes"])
    base = store.directory.resolve()
    locations = [*store.attributes.get("locations", []), str(base)]
    added = skipped = duplicates = 0
    for start in range(0, len(database), chunk_size):
        samples, digests = [], []
        for sample in database.samples[start : start + chunk_size]:
            path = _relative(sample.path, base)
            digest = _digest(sample.path)
            if path in known_paths or digest in known_digests:
                duplicates += 1
                continue
            known_paths.add(path)
            if digest:
                known_digests.add(digest)
            samples.append(sample)
            digests.append(digest)
        if not samples:
            continue
        rows, arrays, n_skipped = _database_features(system, samples, database.classes, classes)
        skipped += n_skipped
        if rows:
            digest_of = {_relative(s.path, base): d for s, d in zip(samples, digests)}
            rows = [replace(row, path=rel, digest=digest_of[rel]) for row in rows for rel in [_relative(row.path, base)]]
            store.append(rows, arrays, fingerprint=_fingerprint(system),
                         attributes={"classes": classes, "locations": list(dict.fromkeys(locations))})
            added += len(rows)
    return BuildResult(index_dir=store.directory, added=added, skipped=skipped, total=len(store),
                       duplicates=duplicates)


def _relative(path: str | os.PathLike, base: Path) -> str:
    """`path` relative to the index folder `base` (resolved), in posix form."""
    return Path(os.path.relpath(Path(path).resolve(), base)).as_posix()


def _digest(path: str | os.PathLike) -> str:
    """Content hash of an image file ("" when it cannot be read: extraction will skip and count it)."""
    try:
        return file_digest(path)
    except OSError:
        return ""


def _none_readable(database: FineGrainedDataset) -> str:
    first = database.samples[0].path
    try:
        load_image(first)
        reason = "no image could be decoded"
    except ImageLoadError as exc:
        reason = f"e.g. {exc.path}: {exc.reason}"
    return f"none of the {len(database)} images of {database.name!r} could be read ({reason}); nothing was written"


def _system_location(system: System, index_dir: Path) -> dict[str, str]:
    absolute = system.path.resolve()
    return {"relative": Path(os.path.relpath(absolute, index_dir.resolve())).as_posix(), "absolute": str(absolute)}


def _find_system(store: FeatureStore, index_dir: Path) -> Path:
    """The system folder the index names: relative to the index first (moved together), else where it was."""
    location = store.attributes["system"]
    for candidate in (index_dir / location["relative"], Path(location["absolute"])):
        if (candidate / SYSTEM_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"the system that built index {index_dir} is neither at {index_dir / location['relative']} "
                            f"nor at {location['absolute']}; pass its folder explicitly (system_dir / --system)")


def _check_system(store: FeatureStore, system: System, index_dir: Path) -> None:
    """Refuse an index built by another system, naming the system files that changed since."""
    try:
        store.check_fingerprint(_fingerprint(system))
    except IndexMismatchError as exc:
        built = store.attributes.get("system_files", {})
        changed = sorted(n for n in set(built) | set(system.files) if built.get(n) != system.files.get(n))
        detail = f"files changed since the index was built: {', '.join(changed)}" if changed else str(exc)
        raise IndexMismatchError(f"index {index_dir} was built by another version of the system at {system.path} "
                                 f"({detail}); rebuild the index with --force, or use the system it was built "
                                 "with") from None


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
        # Paths are relative to the index; where it was built is the fallback for an index moved on its own.
        self._bases = [store.directory.resolve(), *map(Path, reversed(store.attributes.get("locations", [])))]

    @classmethod
    def load(
        cls,
        index_dir: str | os.PathLike,
        device: str = "auto",
        system_dir: str | os.PathLike | None = None,
        verify: bool = False,
    ) -> RetrievalEngine:
        """Open an index and the system that built it (or `system_dir`); refuses a mismatched pair.

        File sizes and counts are always checked, checksums too with `verify`; a damaged index raises
        CorruptIndexError naming the file."""
        path = Path(index_dir)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path} is not a retrieval index (no {MANIFEST}); build one with `fgia index`")
        store = FeatureStore.open(path, device=device, verify=verify)
        system = load_system(system_dir or _find_system(store, path), device)
        _check_system(store, system, path)
        if len(store) == 0:
            raise IndexMismatchError(f"index {path} is empty")
        engine = cls(system, store, store.attributes["classes"])
        engine._check_consistency()
        return engine

    def _check_consistency(self) -> None:
        """Every stored label has a class name, every route a meta-category, every array a row per image."""
        where = self.store.directory / self.store.manifest["metadata"]
        for name, values in self.arrays.items():
            if len(values) != len(self.rows):
                raise CorruptIndexError(f"{self.store.directory}: array {name!r} has {len(values)} rows for "
                                        f"{len(self.rows)} images; rebuild the index with --force")
        labels = self.labels()
        if len(labels) and labels.max() >= len(self.classes):
            raise CorruptIndexError(f"{where}: labels up to {labels.max()} but only {len(self.classes)} class names "
                                    "are committed; rebuild the index with --force")
        routes = self.arrays["route"][:, 0]
        if len(routes) and not np.isin(routes, np.arange(len(self.system.categories))).all():
            raise CorruptIndexError(f"{self.store.directory}: stored routes outside the system's "
                                    f"{len(self.system.categories)} meta-categories; rebuild the index with --force")

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
            "system": self.system.path.name,
            "fingerprint": self.system.fingerprint,
        }

    def image_path(self, image_id: int) -> Path:
        """Path of database image `image_id` (relative to the index, or where the index was built when the
        index was moved without its images)."""
        if not 0 <= image_id < len(self.rows):
            raise IndexError(f"image id {image_id} is outside the index (0..{len(self.rows) - 1})")
        candidates = [Path(os.path.normpath(base / self.rows[image_id].path)) for base in self._bases]
        return next((p for p in candidates if p.exists()), candidates[0])

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
            paths=[str(self.image_path(int(i))) for i in ids],
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
