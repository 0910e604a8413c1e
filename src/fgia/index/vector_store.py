"""The interface the retrieval engine reads an index through, and an in-memory implementation of it.

A `VectorStore` holds, for N database items, a metadata row each (`StoreRow`: path, category, label, route,
content hash) and named float arrays with one row per item; some arrays have a vector index to search. The
engine only asks for rows, arrays by name (exact single-stage searches), vectors by item id (query expansion),
distances from queries to items by id (re-ranking) and index searches, so every backend (the on-disk
`FeatureStore`, `MemoryStore`, a vector database) serves it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fgia.index.milvus_store import DESCRIPTOR, MilvusStore, milvus_uri
from fgia.index.store import MANIFEST, FeatureStore, StoreRow
from fgia.index.vector_index import (
    IndexConfig,
    VectorIndex,
    create_index,
    sq_distances_by_id,
)


@runtime_checkable
class VectorStore(Protocol):
    """What a retrieval index offers the engine (see the module docstring)."""

    @property
    def dims(self) -> dict[str, int]: ...

    @property
    def attributes(self) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def rows(self) -> list[StoreRow]: ...

    def routes(self) -> np.ndarray: ...

    def array(self, name: str) -> np.ndarray: ...

    def fetch(self, name: str, ids: np.ndarray) -> np.ndarray: ...

    def distances(self, name: str, queries: np.ndarray, ids: np.ndarray) -> np.ndarray: ...

    def index(self, name: str) -> VectorIndex: ...

    def search(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class MemoryStore:
    """A `VectorStore` over arrays held in memory (nothing is written), e.g. for benchmarks at sizes no model
    was run for, or features computed elsewhere."""

    def __init__(self, rows: Sequence[StoreRow], arrays: Mapping[str, np.ndarray],
                 indexes: Mapping[str, str | IndexConfig] | None = None, device: str = "auto",
                 attributes: Mapping[str, Any] | None = None) -> None:
        self._rows = list(rows)
        self._arrays = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in arrays.items()}
        for name, values in self._arrays.items():
            if values.ndim != 2 or len(values) != len(self._rows):
                raise ValueError(f"array {name!r} must be ({len(self._rows)}, dim), got shape {values.shape}")
        self._indexes = {}
        for name, cfg in (indexes or {}).items():
            cfg = IndexConfig(factory=cfg) if isinstance(cfg, str) else cfg
            index = create_index(self._arrays[name].shape[1], factory=cfg.factory, search_params=cfg.search_params,
                                 device=device, backend=cfg.backend, fp16=cfg.fp16)
            index.train(self._arrays[name])
            index.add(self._arrays[name])
            self._indexes[name] = index
        self.attributes = dict(attributes or {})

    @property
    def dims(self) -> dict[str, int]:
        return {name: values.shape[1] for name, values in self._arrays.items()}

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[StoreRow]:
        return self._rows

    def routes(self) -> np.ndarray:
        return np.array([r.route for r in self._rows], dtype=np.int64)

    def array(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def fetch(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Vectors for item ids of any shape (-1, padding, gives zeros): (*ids.shape, dim)."""
        ids = np.asarray(ids, dtype=np.int64)
        values = self._arrays[name][np.maximum(ids, 0)]
        return np.where((ids >= 0)[..., None], values, 0.0).astype(np.float32, copy=False)

    def distances(self, name: str, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Squared Euclidean distances (Q, n) from each query (Q, d) to array `name`'s vectors of its item ids
        (Q, n), over their first d columns; padding (-1) gives inf."""
        return sq_distances_by_id(self._arrays[name], queries, ids)

    def index(self, name: str) -> VectorIndex:
        if name not in self._indexes:
            raise ValueError(f"array {name!r} has no index (indexed: {sorted(self._indexes)})")
        return self._indexes[name]

    def search(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances (nq, k), item ids (nq, k), -1 padded) from the index over `name`."""
        return self.index(name).search(queries, k)


STORES = ("faiss", "milvus:///abs/path/fgia.db", "milvus://host:19530")
"""The `--store` values: the on-disk FAISS store (in the index folder), Milvus Lite, a Milvus server."""


def has_store(directory: str | Path) -> bool:
    """Whether `directory` holds a store of any backend."""
    return any((Path(directory) / name).is_file() for name in (MANIFEST, DESCRIPTOR))


def create_store(directory: str | Path, store: str, fingerprint: Mapping[str, Any], dims: Mapping[str, int],
                 indexes: Mapping[str, str | IndexConfig] | None = None, device: str = "auto",
                 attributes: Mapping[str, Any] | None = None) -> FeatureStore | MilvusStore:
    """An empty store in `directory` on the backend `store` names (see `STORES`)."""
    if store == "faiss":
        return FeatureStore.create(directory, fingerprint, dims, indexes=indexes, device=device, attributes=attributes)
    return MilvusStore.create(directory, milvus_uri(store), fingerprint, dims, indexes=indexes, attributes=attributes)


def open_store(directory: str | Path, expected_fingerprint: Mapping[str, Any] | None = None, device: str = "auto",
               verify: bool = False) -> FeatureStore | MilvusStore:
    """The store in `directory`, whichever backend wrote it (arguments as `FeatureStore.open`)."""
    if (Path(directory) / DESCRIPTOR).is_file():
        return MilvusStore.open(directory, expected_fingerprint, verify=verify)
    return FeatureStore.open(directory, expected_fingerprint, device=device, verify=verify)

