"""Index a database with a trained system and answer image queries: `build_index` and `RetrievalEngine`.

An index directory holds a store (`fgia.index.FeatureStore`, the default, or `fgia.index.MilvusStore`, whose
vectors live in Milvus and whose folder holds where) whose attributes, committed with every append, hold the
system's location and the database class names. For every database image it holds, computed offline in one
pass of the system's models:

    coarse        coarse_dim PCA of the unified model's Conv-Net feature (with the vector index the coarse
                  stage searches)
    unified       the unified model's whole embedding, L2-normalised (the "Unified" single-stage row)
    fine/<name>   [image, region] fine feature under "unified" and, with category models, under EVERY category
                  model, so whichever model a query is routed to can re-rank any candidate
    box           the discriminative region (x1, y1, x2, y2, original pixels) of the unified model
    codes/<bits>  with `codes` (a system trained with `hash_bits`): the hashing model's binary code (+-1), with a
                  FAISS binary index ("BFlat", "BIVF...") for Hamming search: the "hash" pipeline, or "c2f-hash",
                  where it replaces the coarse stage of coarse-to-fine; the store attribute "codes" holds the bits

and, in its metadata row, the route: the meta-category the coarse classifier predicts for the image (index into
categories); the fine stage ranks candidates routed like the query before the others. The engine reads a store
through `VectorStore` only (rows, search, fetch by id), so any backend with those serves it.

Every pipeline (`Pipeline`) runs through `RetrievalEngine.rank` on a batch of query features, so evaluation,
the CLI, the server and the benchmarks share one code path. Query expansion (the paper's "average the top-5
and search again") averages the query with its top hits' features and runs the whole search again with the
expanded query: for coarse-to-fine, the coarse stage too, so the expanded query can reach images the first
candidate list missed. The store's fingerprint holds the system fingerprint, so an index built by another
system is refused. Image and system paths are stored relative to the index (with the absolute locations as a
fallback), so an index moved together with its images, or alone, still works.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgia.data.images import ImageLoadError, load_image
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.binary import binarize
from fgia.features.distributed import ray_session
from fgia.features.extract import FeatureSet
from fgia.features.pca import l2_normalize
from fgia.index import (
    CorruptIndexError,
    FeatureStore,
    IndexConfig,
    IndexMismatchError,
    MemoryStore,
    MilvusStore,
    StoreRow,
    VectorStore,
    create_store,
    file_digest,
    has_store,
    open_store,
)
from fgia.index.milvus_store import DESCRIPTOR, milvus_uri
from fgia.index.store import MANIFEST
from fgia.retrieval.search import (
    Ranking,
    average_query_expansion,
    knn,
    order_candidates,
)
from fgia.retrieval.system import HASH, SYSTEM_FILE, System, load_system
from fgia.runtime import (
    OUTPUT_MARKER,
    clear_folder,
    output_folder,
    output_kind,
    single_threaded_blas,
)
from fgia.train import UNIFIED

INDEX_KIND = "index"
ENGINES = ("local", "ray")  # where `build_index` extracts features: this process, or a Ray cluster
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


CODES_PREFIX = "codes/"


def codes_name(bits: int) -> str:
    """Store array holding the `bits`-bit binary codes."""
    return f"{CODES_PREFIX}{bits}"


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
                   images: Sequence[Image.Image] | None = None, progress: bool = False,
                   engine: str = "local") -> ImageFeatures:
    """Features of dataset samples (unreadable ones left out) or in-memory images under every model of
    `system`, in one pass of its models (`engine` "ray": samples are extracted on Ray, see `System.features`)."""
    return stage_features(system, system.features(samples, images, progress=progress, engine=engine))


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
    progress: bool = False,
    codes: int | None = None,
    hash_factory: str = "BFlat",
    store: str = "faiss",
    engine: str = "local",
    ray_address: str | None = None,
    search_params: str = "",
) -> BuildResult:
    """Extract and store every stage's features of `database` (see the module docstring).

    A new index is built beside `index_dir` and moved into place when complete: a build that fails leaves
    nothing, one that is killed is resumed by the next build of the same `index_dir`. A folder that is not
    empty is refused (an index too: use `append`) unless `force`, which replaces it when the new one is
    complete. `append=True` adds to an existing index built by the same system; images already in it (same
    path or same content) are skipped and counted. Unreadable images are skipped and counted. Each chunk of
    `chunk_size` images is committed (with the class names it uses) as one generation of the store. `codes`: also
    store the system's `codes`-bit binary codes with a `hash_factory` binary index (an appended index keeps the
    code length it was built with; FAISS store only).

    `store` picks the backend (`fgia.index.STORES`): "faiss" (files in `index_dir`) or a Milvus URI (then
    `index_dir` holds where the collections are; `factory` is translated to a Milvus index). `search_params` are
    the coarse index's search-time knobs, saved with it (e.g. "nprobe=32" for an IVF factory, whose FAISS default
    is to probe one list). `engine` "ray" extracts the features on Ray (`ray_address`: a running cluster, None: a
    local Ray on this machine).
    """
    if not len(database):
        raise ValueError(f"database {database.name!r} has no images to index")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if store != "faiss":
        milvus_uri(store)  # a bad --store fails before the models load
    system = load_system(system_dir, device)
    out = Path(index_dir)
    with ray_session(ray_address) if engine == "ray" else contextlib.nullcontext():
        if append:
            if output_kind(out) != INDEX_KIND or not has_store(out):
                raise FileNotFoundError(f"{out} holds no index to append to; build one first (without --append)")
            opened = open_store(out, device=device)
            _check_system(opened, system, out)
            held = opened.attributes.get("codes")
            if codes and codes != held:
                raise IndexMismatchError(f"index {out} holds {f'{held}-bit' if held else 'no'} binary codes, not "
                                         f"{codes}-bit ones")
            return _add(system, opened, database, chunk_size, progress, engine)
        indexes = {"coarse": IndexConfig(factory=factory, search_params=search_params)}
        dims = {"coarse": system.coarse_pca.n_components, "unified": system.models[UNIFIED].embedding_dim, "box": 4}
        dims |= {fine_name(n): system.fine_dim for n in system.fine_models}
        if codes:
            if store != "faiss":
                raise ValueError("binary codes (--codes) are kept in the FAISS store only: build with --store faiss")
            code_slice(system, codes)  # fail before extracting anything
            dims[codes_name(codes)], indexes[codes_name(codes)] = codes, IndexConfig(factory=hash_factory)
        replaced = _milvus_store_at(out) if force else None
        with output_folder(out, INDEX_KIND, force=force, replace_own=False, manifests=[MANIFEST], resume=True) as stage:
            built = _resumable(stage, system, indexes, store, device)
            if built is None:
                built = create_store(stage, store, _fingerprint(system), dims, indexes=indexes, device=device,
                                     attributes={"classes": [], "system": _system_location(system, stage),
                                                 "system_files": system.files, "codes": codes})
            try:
                result = _add(system, built, database, chunk_size, progress, engine)
                if not len(built):
                    raise ValueError(_none_readable(database))
            except BaseException:
                if isinstance(built, MilvusStore):  # the staging folder that names its collections goes too
                    built.drop()
                raise
    if replaced is not None:
        replaced.drop()
    return replace(result, index_dir=out)


def _milvus_store_at(folder: Path) -> MilvusStore | None:
    """The Milvus store an index folder describes (whose collections go when a build replaces it), or None."""
    if not (folder / DESCRIPTOR).is_file():
        return None
    try:
        return MilvusStore.open(folder)
    except (CorruptIndexError, ValueError, OSError):
        return None


def _same_index(found: IndexConfig | None, wanted: IndexConfig) -> bool:
    return found is not None and (found.factory, found.search_params) == (wanted.factory, wanted.search_params)


def _resumable(stage: Path, system: System, indexes: dict[str, IndexConfig], store: str,
               device: str) -> FeatureStore | MilvusStore | None:
    """The store a killed build of the same index (same backend, index factories, search parameters and binary
    codes) left in `stage`, when it can go on; else None (and `stage` is emptied, with the Milvus collections it
    names: everything in it is what that build wrote)."""
    if has_store(stage):
        try:
            found = open_store(stage, expected_fingerprint=_fingerprint(system), device=device)
            same_backend = (isinstance(found, FeatureStore) if store == "faiss"
                            else isinstance(found, MilvusStore) and found.uri == milvus_uri(store))
            if same_backend and all(_same_index(found.index_config(n), cfg) for n, cfg in indexes.items()):
                return found
        except (CorruptIndexError, IndexMismatchError, ValueError, KeyError, OSError):
            pass
    leftover = _milvus_store_at(stage)
    if leftover is not None:
        leftover.drop()
    clear_folder(stage, keep={OUTPUT_MARKER})
    return None


def _add(system: System, store: FeatureStore | MilvusStore, database: FineGrainedDataset, chunk_size: int,
         progress: bool, engine: str = "local") -> BuildResult:
    """Append the images of `database` not in `store` yet (by path and by content), one commit per chunk; the
    coarse vector index is saved once, after the last chunk (each chunk writes only its own rows)."""
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
        rows, arrays, n_skipped = _database_features(system, samples, database.classes, classes, progress, engine,
                                                     store.attributes.get("codes"))
        skipped += n_skipped
        if rows:
            digest_of = {_relative(s.path, base): d for s, d in zip(samples, digests)}
            rows = [replace(row, path=rel, digest=digest_of[rel]) for row in rows for rel in [_relative(row.path, base)]]
            store.append(rows, arrays, fingerprint=_fingerprint(system), save_index=False,
                         attributes={"classes": classes, "locations": list(dict.fromkeys(locations))})
            added += len(rows)
    store.save_indexes()
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


def _find_system(store: FeatureStore | MilvusStore, index_dir: Path) -> Path:
    """The system folder the index names: relative to the index first (moved together), else where it was."""
    location = store.attributes["system"]
    for candidate in (index_dir / location["relative"], Path(location["absolute"])):
        if (candidate / SYSTEM_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"the system that built index {index_dir} is neither at {index_dir / location['relative']} "
                            f"nor at {location['absolute']}; pass its folder explicitly (system_dir / --system)")


def _check_system(store: FeatureStore | MilvusStore, system: System, index_dir: Path) -> None:
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
    system: System, samples: Sequence[Sample], source_classes: list[str], classes: list[str], progress: bool,
    engine: str = "local",
    codes: int | None = None,
) -> tuple[list[StoreRow], dict[str, np.ndarray], int]:
    """Rows and arrays for the readable `samples` (with `codes`-bit codes when given); extends `classes` with new
    class names (in place)."""
    f = image_features(system, samples, progress=progress, engine=engine)
    boxes = f.boxes if f.boxes is not None else np.zeros((len(f), 4), np.float32)
    arrays = {"coarse": f.coarse, "unified": f.unified, "box": boxes, **f.fine}
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
        rows.append(StoreRow(path=str(Path(s.path).resolve()), category=s.category or "", label=label,
                             route=int(f.route[len(rows)])))
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

    def __init__(self, system: System, store: VectorStore, classes: list[str]) -> None:
        self.system = system
        self.store = store
        self.classes = classes
        self.rows = store.rows()
        self.routes = store.routes()
        self.top_k = system.config.resolve_top_k(len(store))
        self.code_bits: int | None = store.attributes.get("codes")
        # Paths are relative to the index; where it was built is the fallback for an index moved on its own.
        directory = getattr(store, "directory", None)
        self._bases = [*([Path(directory).resolve()] if directory else []),
                       *map(Path, reversed(store.attributes.get("locations", [])))] or [Path()]  # in memory: as given

    @classmethod
    def from_arrays(cls, system: System, rows: Sequence[StoreRow], arrays: dict[str, np.ndarray],
                    classes: list[str], factory: str = "Flat", device: str = "auto",
                    hash_factory: str = "BFlat") -> RetrievalEngine:
        """An engine over in-memory arrays (named as in a built index, see the module docstring), e.g. features
        computed elsewhere or a benchmark's synthetic database; a "codes/<bits>" array gets a `hash_factory`
        binary index."""
        codes = [name for name in arrays if name.startswith(CODES_PREFIX)]
        if len(codes) > 1:
            raise ValueError(f"an index holds one code length, got arrays {codes}")
        indexes = {"coarse": factory} | {name: hash_factory for name in codes}
        attributes = {"codes": arrays[codes[0]].shape[1]} if codes else {}
        return cls(system, MemoryStore(rows, arrays, indexes=indexes, device=device, attributes=attributes), classes)

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
        if not has_store(path):
            raise FileNotFoundError(f"{path} is not a retrieval index (no {MANIFEST} nor {DESCRIPTOR}); build one with "
                                    "`fgia index`")
        store = open_store(path, device=device, verify=verify)
        system = load_system(system_dir or _find_system(store, path), device)
        _check_system(store, system, path)
        if len(store) == 0:
            raise IndexMismatchError(f"index {path} is empty")
        engine = cls(system, store, store.attributes["classes"])
        engine._check_consistency()
        return engine

    def _check_consistency(self) -> None:
        """Every stored label has a class name and every route a meta-category."""
        labels = self.labels()
        if len(labels) and labels.max() >= len(self.classes):
            raise CorruptIndexError(f"{self.store.directory}: labels up to {labels.max()} but only "
                                    f"{len(self.classes)} class names are committed; rebuild the index with --force")
        if len(self.routes) and not np.isin(self.routes, np.arange(len(self.system.categories))).all():
            raise CorruptIndexError(f"{self.store.directory}: stored routes outside the system's "
                                    f"{len(self.system.categories)} meta-categories; rebuild the index with --force")

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
            "factory": self.store.index("coarse").factory,
            "codes": self.code_bits,
            "top_k": self.top_k,
            "query_expansion": cfg.qe_top,
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

    def query_features(self, samples: Sequence[Sample] | None = None, images: Sequence[Image.Image] | None = None,
                       progress: bool = False) -> ImageFeatures:
        """Features of dataset samples or in-memory images under every model at once (unreadable samples skipped,
        see `.index`)."""
        return image_features(self.system, samples, images, progress)

    # ------------------------------------------------------------------------------------------- ranking
    def rank(self, qf: ImageFeatures, pipeline: Pipeline | str = Pipeline.C2F, query_expansion: bool = False,
             top_k: int | None = None, full: bool = False, timer: StageTimer | None = None) -> Ranking:
        """Rankings of a batch of queries with one pipeline (query expansion with the system's `qe_top` hits).

        Single-stage pipelines search the whole database exactly ("hash" by Hamming distance in the binary code
        index); c2f pipelines re-rank the coarse stage's (for "c2f-hash" the Hamming search's) K
        candidates (K = `top_k` or the system's), those routed like the query first. With `full`, every ranking
        covers the whole database: c2f appends the images outside the candidates in first-stage order (what mAP over
        the whole database needs). `timer` accumulates the coarse and fine search times."""
        pipeline = Pipeline.parse(pipeline)
        timer = timer or StageTimer()
        qe_top = self.system.config.qe_top if query_expansion else 0
        if query_expansion and not qe_top:
            raise ValueError("query expansion needs the system's qe_top >= 1")
        k = len(self) if full else top_k or self.top_k
        if pipeline is Pipeline.HASH:
            query, name = self._first_stage(qf, pipeline)
            with timer("coarse_search"):
                ranking = self._first_search(query, name, k)
                if qe_top:
                    hits = ranking.ids[:, :qe_top]
                    expanded = average_query_expansion(query, self.store.fetch(name, hits), hits >= 0)
                    ranking = self._first_search(expanded, name, k)
            return ranking
        if not pipeline.is_c2f:
            query, database = self._single_stage(qf, pipeline)
            with timer("coarse_search"):
                ranking = knn(query, database, k)
                if qe_top:
                    hits = ranking.ids[:, :qe_top]
                    ranking = knn(average_query_expansion(query, database[np.maximum(hits, 0)], hits >= 0), database, k)
            return ranking
        k_coarse = top_k or self.top_k
        first, name = self._first_stage(qf, pipeline)
        query = self._fine_query(qf, pipeline)
        ranking = self._c2f(first, name, query, pipeline, qf.route, k_coarse, full, timer)
        if qe_top:
            hits = ranking.ids[:, :qe_top]
            with timer("fine_search"):
                first = average_query_expansion(first, self.store.fetch(name, hits), hits >= 0)
                query = average_query_expansion(query, self._fine_vectors(pipeline, qf.route, hits), hits >= 0)
            ranking = self._c2f(first, name, query, pipeline, qf.route, k_coarse, full, timer)
        return ranking

    def _first_stage(self, qf: ImageFeatures, pipeline: Pipeline) -> tuple[np.ndarray, str]:
        """(query features, store array) of the stage that picks candidates: the binary codes for the hash
        pipelines, else the coarse feature."""
        if pipeline not in (Pipeline.HASH, Pipeline.C2F_HASH):
            return qf.coarse, "coarse"
        if self.code_bits is None:
            raise ValueError(f"pipeline {pipeline.value!r} needs an index built with binary codes (fgia index "
                             "--codes BITS, with a system trained with --codes)")
        return binary_codes(self.system, qf.codes, self.code_bits), codes_name(self.code_bits)

    def _first_search(self, query: np.ndarray, name: str, k: int) -> Ranking:
        """The k nearest in the index over store array `name`: Hamming distances for binary codes, Euclidean
        ones for the coarse feature."""
        distances, ids = self.store.search(name, query, k)
        if name == "coarse":
            distances = np.sqrt(np.maximum(distances, 0))
        return Ranking(ids=ids, distances=distances.astype(np.float32))

    def _single_stage(self, qf: ImageFeatures, pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
        if pipeline is Pipeline.COARSE:
            return qf.coarse, self.store.array("coarse")
        if pipeline is Pipeline.UNIFIED:
            return qf.unified, self.store.array("unified")
        dim = getattr(self.system.models[UNIFIED], "conv_feature_dim", qf.unified.shape[1])
        return l2_normalize(qf.unified[:, :dim]), l2_normalize(self.store.array("unified")[:, :dim])

    def _fine_models(self, pipeline: Pipeline) -> list[str]:
        """The model whose fine feature re-ranks for each meta-category (index = route)."""
        return [UNIFIED if pipeline is Pipeline.C2F_UNIFIED else self.system.model_for(c)
                for c in range(len(self.system.categories))]

    def _fine_query(self, qf: ImageFeatures, pipeline: Pipeline) -> np.ndarray:
        """Each query's fine feature under its routed model (only the image part for c2f-image)."""
        names = self._fine_models(pipeline)
        if not len(qf):
            return qf.fine[fine_name(UNIFIED)][:0, : self._fine_dim(pipeline)]
        query = np.stack([qf.fine[fine_name(names[r])][i] for i, r in enumerate(qf.route)])
        return query[:, : self._fine_dim(pipeline)]

    def _fine_dim(self, pipeline: Pipeline) -> int:
        return self.system.part_pcas[UNIFIED][0].n_components if pipeline is Pipeline.C2F_IMAGE else self.system.fine_dim

    def _fine_vectors(self, pipeline: Pipeline, route: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Database fine features (Q, n, d) of `ids` (Q, n), each query's under its routed model."""
        names = self._fine_models(pipeline)
        vectors = np.zeros((*ids.shape, self._fine_dim(pipeline)), dtype=np.float32)
        for m, name in enumerate(names):
            rows = np.flatnonzero(route == m)
            if len(rows):
                vectors[rows] = self.store.fetch(fine_name(name), ids[rows])[..., : vectors.shape[-1]]
        return vectors

    def _fine_distances(self, pipeline: Pipeline, route: np.ndarray, fine: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Euclidean distances (Q, n) from each query's fine feature to those of database `ids` (Q, n) under its
        routed model (padding ids: inf). When the candidates outnumber the database (a large K or batch), one matrix
        product with the whole array is cheaper than reading the vectors of each candidate, and bounded in memory
        by (Q, N)."""
        names, dim = self._fine_models(pipeline), fine.shape[1]
        distances = np.zeros(ids.shape, dtype=np.float32)
        for m, name in enumerate(names):
            rows = np.flatnonzero(route == m)
            if not len(rows):
                continue
            queries, wanted = fine[rows], ids[rows]
            if wanted.size <= len(self):
                distances[rows] = np.sqrt(self.store.distances(fine_name(name), queries, wanted))
                continue
            wanted = np.maximum(wanted, 0)
            database = self.store.array(fine_name(name))[:, :dim]
            squared = (np.einsum("nd,nd->n", database, database)[None, :] - 2.0 * (queries @ database.T)
                       + np.einsum("qd,qd->q", queries, queries)[:, None])
            distances[rows] = np.sqrt(np.maximum(np.take_along_axis(squared, wanted, axis=1), 0.0))
        return distances

    def _c2f(self, first: np.ndarray, name: str, fine: np.ndarray, pipeline: Pipeline, route: np.ndarray, k: int,
             full: bool, timer: StageTimer) -> Ranking:
        """The first stage's top-K (the coarse feature's, or the binary codes' by Hamming distance), re-ranked by
        fine distance (candidates routed like the query first); with `full`, the rest of the database follows in
        first-stage order."""
        with timer("coarse_search"):
            found = self._first_search(first, name, len(self) if full else k)
            candidates = found.ids[:, :k]
        with timer("fine_search"):
            other = (self.routes[np.maximum(candidates, 0)] != route[:, None]) & (candidates >= 0)
            ranking = order_candidates(self._fine_distances(pipeline, route, fine, candidates), candidates,
                                       demote=other)
        if not full:
            return ranking
        return Ranking(ids=np.concatenate([ranking.ids, found.ids[:, k:]], axis=1),
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
        `top_k` hits per image. NumPy's BLAS runs on one thread meanwhile (see `single_threaded_blas`)."""
        pipeline = Pipeline.parse(pipeline)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not images:
            return []
        timer = StageTimer()
        with single_threaded_blas():
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
            paths=[str(self.image_path(int(j))) for j in ids],
            labels=[self.classes[r.label] if r.label >= 0 else None for r in rows] if has_labels else None,
            category=self.system.categories[int(qf.route[i])],
            region_box=None if qf.boxes is None else tuple(float(v) for v in qf.boxes[i]),
            confidence_map=None if qf.maps is None else qf.maps[i],
            timings_ms=dict(timings),
        )


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
