"""A `VectorStore` kept in Milvus (through pymilvus): Milvus Lite (an embedded database file) or a Milvus server.

Every named array is one collection (`<prefix>_<array>`: an INT64 primary key `id`, the item id, and a
FLOAT_VECTOR `vector`), so the coarse vectors and the fine vectors of every category model live in collections of
their own. The metadata (path, category, label, route, content hash) are scalar fields of the first array's
collection (the coarse one in a retrieval index). An array's vector index is a Milvus index translated from the
same FAISS factory strings and search parameters the FAISS store takes (`milvus_index_params`); arrays without an
index get FLAT, which Milvus needs to load a collection.

The index folder holds only `milvus.json`: where the collections are (URI, collection prefix), the fingerprint, the
dimensions and index configs, the caller's attributes and the committed item count. An append inserts its rows
(ids from the committed count on), flushes them, then commits by atomically replacing `milvus.json`; rows a
killed append left above the count are ignored by searches and deleted by the next append. One writer at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgia.config import to_dict
from fgia.index.store import (
    CorruptIndexError,
    StoreRow,
    fingerprint_diff,
    validate_append,
)
from fgia.index.vector_index import (
    IndexConfig,
    IndexMismatchError,
    VectorIndex,
    sq_distances_by_id,
)
from fgia.runtime import atomic_write_text, write_error

if TYPE_CHECKING:  # pymilvus is imported on first use: it is an optional dependency (the `scale` extra)
    from pymilvus import MilvusClient

DESCRIPTOR = "milvus.json"
_FORMAT = "fgia-milvus-store"
_FORMAT_VERSION = 1
_MAX_TOPK = 16384  # Milvus's limit on the hits of one search and on the rows of one query
_INSERT_FLOATS = 1 << 22  # rows per insert call: about 16 MB of float32 values
_LITE_FLAT_BYTES = 1 << 29
_ROW_FIELDS = ("path", "category", "label", "route", "digest")
_LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")


def milvus_uri(spec: str) -> str:
    """The pymilvus URI of a `--store` value: `milvus:///abs/path/x.db` (Milvus Lite) or `milvus://host:port`
    (`milvus+https://host:port` for TLS)."""
    match = re.fullmatch(r"milvus(\+https)?://(.*)", spec)
    if not match or not match.group(2):
        raise ValueError(f"unknown store {spec!r}: use faiss, milvus:///abs/path/fgia.db (Milvus Lite) or "
                         "milvus://host:19530 (a Milvus server)")
    target = match.group(2)
    if target.startswith("/") or target.endswith(".db"):
        if match.group(1) or not target.endswith(".db") or not target.startswith("/"):
            raise ValueError(f"store {spec!r}: a Milvus Lite database is an absolute path ending in .db")
        return target
    return f"{'https' if match.group(1) else 'http'}://{target}"


def is_lite(uri: str) -> bool:
    """Whether `uri` is a Milvus Lite database file (not a server)."""
    return uri.startswith("/")


def milvus_index_params(config: IndexConfig, lite: bool = False) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(Milvus index type, build params, search params) for a FAISS factory string and FAISS-style search params.

    "Flat" -> FLAT; "IVF<nlist>,Flat" -> IVF_FLAT; "IVF<nlist>,SQ8" -> IVF_SQ8; "IVF<nlist>,PQ<m>[x<nbits>]" ->
    IVF_PQ (Milvus servers only); "HNSW<M>" -> HNSW (efConstruction 40, FAISS's). Search params "nprobe=N" and
    "efSearch=N"; their defaults are FAISS's (nprobe 1, efSearch 16), so both backends search alike.
    """
    factory = config.factory.replace(" ", "")
    patterns = [
        (r"Flat", lambda m: ("FLAT", {})),
        (r"IVF(\d+),Flat", lambda m: ("IVF_FLAT", {"nlist": int(m[1])})),
        (r"IVF(\d+),SQ8", lambda m: ("IVF_SQ8", {"nlist": int(m[1])})),
        (r"IVF(\d+),PQ(\d+)(?:x(\d+))?", lambda m: ("IVF_PQ", {"nlist": int(m[1]), "m": int(m[2]),
                                                              "nbits": int(m[3] or 8)})),
        (r"HNSW(\d+)", lambda m: ("HNSW", {"M": int(m[1]), "efConstruction": 40})),
    ]
    for pattern, make in patterns:
        if match := re.fullmatch(pattern, factory):
            index_type, build = make(match)
            break
    else:
        raise ValueError(f"factory {config.factory!r} has no Milvus index; the Milvus store takes Flat, IVF<n>,Flat, "
                         "IVF<n>,SQ8, IVF<n>,PQ<m>[x<bits>] or HNSW<M>")
    if lite and index_type not in _LITE_INDEX_TYPES:
        raise ValueError(f"Milvus Lite builds {', '.join(_LITE_INDEX_TYPES)} indexes, not {index_type} (factory "
                         f"{config.factory!r}); use a Milvus server (--store milvus://host:19530) for it")
    search: dict[str, Any] = {"IVF": {"nprobe": 1}, "HNS": {"ef": 16}, "FLA": {}}[index_type[:3]]
    names = {"nprobe": "nprobe", "efSearch": "ef"}
    for item in filter(None, config.search_params.replace(" ", "").split(",")):
        key, _, value = item.partition("=")
        if names.get(key) not in search or not value.isdigit():
            raise ValueError(f"invalid search parameter {item!r} for a Milvus {index_type} index (takes "
                             f"{', '.join(k for k, v in names.items() if v in search) or 'none'})")
        search[names[key]] = int(value)
    return index_type, build, search


def connect(uri: str) -> MilvusClient:
    """A client for `uri` (a Milvus Lite file or a server; a server token is read from FGIA_MILVUS_TOKEN)."""
    if is_lite(uri) and not Path(uri).parent.is_dir():
        raise FileNotFoundError(f"the folder of the Milvus Lite database {uri} does not exist; create it first")
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ImportError("the Milvus store needs pymilvus: pip install 'fgia[scale]'") from None
    try:
        return MilvusClient(uri=uri, token=os.environ.get("FGIA_MILVUS_TOKEN", ""))
    except Exception as exc:  # noqa: BLE001 - pymilvus raises several unrelated types for an unreachable server
        busy = (" (Milvus Lite serves one process at a time: is another fgia command using it? A Milvus server "
                "serves many)") if is_lite(uri) else ""
        raise ConnectionError(f"cannot connect to Milvus at {uri}: {exc}{busy}") from None


class MilvusIndex(VectorIndex):
    """The vector index of one array of a `MilvusStore`, as the engine sees an index: searches go to Milvus;
    vectors are added through `MilvusStore.append`, and Milvus keeps the index, so it is never saved to a file."""

    def __init__(self, store: MilvusStore, name: str, config: IndexConfig) -> None:
        super().__init__(store.dims[name], config)
        self.store = store
        self.name = name

    def __len__(self) -> int:
        return len(self.store)

    def _add(self, x: np.ndarray) -> None:
        raise TypeError(f"the Milvus index of {self.name!r} takes rows through MilvusStore.append")

    def _search(self, q: np.ndarray, k: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.search(self.name, q, k, batch_size)

    def save(self, path: str | Path) -> None:
        raise TypeError(f"the Milvus index of {self.name!r} lives in Milvus ({self.store.uri}), not in a file")


class MilvusStore:
    """A feature store in Milvus; get one with `MilvusStore.create` or `MilvusStore.open`."""

    def __init__(self, directory: Path, descriptor: dict[str, Any], client: MilvusClient) -> None:
        self.directory = directory
        self.descriptor = descriptor
        self.client = client
        self._rows: list[StoreRow] | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._leftovers = False

    # Construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path,
        uri: str,
        fingerprint: Mapping[str, Any],
        dims: Mapping[str, int],
        indexes: Mapping[str, str | IndexConfig] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> MilvusStore:
        """Create the collections of an empty store in Milvus at `uri` and its descriptor in `directory` (same
        arguments as `FeatureStore.create`); refuses a directory that already holds a store."""
        directory = Path(directory)
        if (directory / DESCRIPTOR).exists():
            raise FileExistsError(f"{directory} already holds a Milvus store; open it to append")
        if not dims:
            raise ValueError("a feature store needs at least one named array")
        configs = {n: IndexConfig(factory=c) if isinstance(c, str) else c for n, c in (indexes or {}).items()}
        unknown = set(configs) - set(dims)
        if unknown:
            raise ValueError(f"indexes over unknown arrays: {sorted(unknown)} (arrays: {sorted(dims)})")
        for cfg in configs.values():
            milvus_index_params(cfg, is_lite(uri))  # fail before creating anything
        prefix = f"fgia_{secrets.token_hex(6)}"
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        descriptor = {
            "format": _FORMAT, "format_version": _FORMAT_VERSION, "uri": uri, "prefix": prefix,
            "collections": {name: f"{prefix}_{i}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"[:255]
                            for i, name in enumerate(dims)},
            "fingerprint": json.loads(json.dumps(dict(fingerprint), sort_keys=True)),
            "dims": {name: int(dim) for name, dim in dims.items()},
            "indexes": {name: to_dict(cfg) for name, cfg in configs.items()},
            "count": 0, "attributes": json.loads(json.dumps(dict(attributes or {}))), "created": now, "updated": now,
        }
        store = cls(directory, descriptor, connect(uri))
        try:
            for name in dims:
                store._create_collection(name)
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(directory / DESCRIPTOR, json.dumps(descriptor, indent=2), durable=True)
        except BaseException:
            store.drop()
            raise
        return store

    @classmethod
    def open(cls, directory: str | Path, expected_fingerprint: Mapping[str, Any] | None = None,
             verify: bool = False) -> MilvusStore:
        """Open the store described in `directory`, checking that every collection holds its committed rows
        (with `verify`, also that the metadata ids run 0..count-1); with `expected_fingerprint`, refuse
        (IndexMismatchError) one built differently."""
        directory = Path(directory)
        path = directory / DESCRIPTOR
        try:
            descriptor = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no Milvus store at {directory} (missing {DESCRIPTOR})") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptIndexError(f"{path} is not valid JSON ({exc}); rebuild the index with --force") from None
        if not isinstance(descriptor, dict) or descriptor.get("format") != _FORMAT:
            raise CorruptIndexError(f"{path} is not a {_FORMAT} descriptor; rebuild the index with --force")
        if descriptor.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path} is a version-{descriptor.get('format_version')} {_FORMAT}; this fgia reads "
                             f"version {_FORMAT_VERSION}: rebuild the index with `fgia index ... --force`")
        store = cls(directory, descriptor, connect(descriptor["uri"]))
        store.check(full=verify)
        if expected_fingerprint is not None:
            store.check_fingerprint(expected_fingerprint)
        return store

    def _create_collection(self, name: str) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dims[name])
        if name == self._metadata_array:
            schema.add_field("path", DataType.VARCHAR, max_length=65535)
            schema.add_field("category", DataType.VARCHAR, max_length=1024)
            schema.add_field("label", DataType.INT64)
            schema.add_field("route", DataType.INT64)
            schema.add_field("digest", DataType.VARCHAR, max_length=128)
        cfg = self.index_config(name) or IndexConfig()
        index_type, build, _ = milvus_index_params(cfg, is_lite(self.uri))
        params = self.client.prepare_index_params()
        # The build parameters as one JSON "params" entry: the wire format every Milvus reads (Milvus Lite 3.2
        # ignores them when pymilvus 3 sends them as separate entries).
        params.add_index(field_name="vector", index_type=index_type, metric_type="L2", params={"params": build})
        collection = self.descriptor["collections"][name]
        if self.client.has_collection(collection):
            raise FileExistsError(f"Milvus at {self.uri} already has a collection {collection}")
        self.client.create_collection(collection, schema=schema, index_params=params)

    # Reading -----------------------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.descriptor["uri"]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.descriptor["fingerprint"]

    @property
    def attributes(self) -> dict[str, Any]:
        """The caller's data committed with the current count."""
        return self.descriptor["attributes"]

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.descriptor["dims"])

    @property
    def collections(self) -> list[str]:
        """The Milvus collections of this store."""
        return list(self.descriptor["collections"].values())

    @property
    def _metadata_array(self) -> str:
        return next(iter(self.descriptor["dims"]))

    def __len__(self) -> int:
        return int(self.descriptor["count"])

    def index_config(self, name: str) -> IndexConfig | None:
        """How the index over array `name` is built (None: the array has no index)."""
        self._collection(name)
        cfg = self.descriptor["indexes"].get(name)
        return None if cfg is None else IndexConfig(**cfg)

    def check_fingerprint(self, expected: Mapping[str, Any]) -> None:
        """Raise IndexMismatchError naming every fingerprint entry that differs from `expected`."""
        diff = fingerprint_diff(self.fingerprint, expected)
        if diff:
            raise IndexMismatchError(f"Milvus store {self.directory} was built with a different model/configuration: "
                                     + "; ".join(diff))

    def check(self, full: bool = False) -> None:
        """Raise CorruptIndexError unless every collection exists and holds the committed rows (with `full`, also
        that the metadata rows are exactly ids 0..count-1). Notes rows a killed append left above the count."""
        count = len(self)
        for name, collection in self.descriptor["collections"].items():
            if not self.client.has_collection(collection):
                raise CorruptIndexError(self._damaged(f"collection {collection} (array {name!r}) is missing"))
            self.client.load_collection(collection)
            held = self._count(collection, f"id < {count}")
            if held != count:
                raise CorruptIndexError(self._damaged(f"collection {collection} (array {name!r}) holds {held} of the "
                                                      f"{count} committed rows"))
            self._leftovers |= self._count(collection, f"id >= {count}") > 0
        if full:
            ids = np.sort(np.concatenate([self._query_range(self._metadata_array, ["id"], start)["id"]
                                          for start in range(0, count, _MAX_TOPK)] or [np.empty(0, np.int64)]))
            if not np.array_equal(ids, np.arange(count)):
                raise CorruptIndexError(self._damaged("the metadata ids are not 0..count-1"))

    def rows(self) -> list[StoreRow]:
        """The metadata rows; a row's position is its id."""
        if self._rows is None:
            rows: list[StoreRow] = []
            for start in range(0, len(self), _MAX_TOPK):
                part = self._query_range(self._metadata_array, ["id", *_ROW_FIELDS], start)
                rows += [StoreRow(path=r["path"], category=r["category"], label=int(r["label"]), route=int(r["route"]),
                                  digest=r["digest"]) for r in part["records"]]
            self._rows = rows
        return self._rows

    def routes(self) -> np.ndarray:
        """Routes of all rows (int64, -1 = none)."""
        return np.array([r.route for r in self.rows()], dtype=np.int64)

    def array(self, name: str) -> np.ndarray:
        """Values of array `name`, (count, dim) float32, read from Milvus once."""
        if name not in self._arrays:
            parts = [self._query_range(name, ["id", "vector"], start)["vector"] for start in range(0, len(self), _MAX_TOPK)]
            self._arrays[name] = np.concatenate(parts) if parts else np.empty((0, self.dims[name]), np.float32)
        return self._arrays[name]

    def fetch(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Vectors of array `name` for item ids of any shape (-1, padding, gives zeros): (*ids.shape, dim)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((*ids.shape, self.dims[name]), dtype=np.float32)
        if name in self._arrays:
            values = self._arrays[name][np.maximum(ids, 0)]
            return np.where((ids >= 0)[..., None], values, out)
        wanted = np.unique(ids[ids >= 0])
        if not len(wanted):
            return out
        keys, values = [np.empty(0, np.int64)], [np.empty((0, self.dims[name]), np.float32)]
        for start in range(0, len(wanted), _MAX_TOPK):
            chunk = wanted[start : start + _MAX_TOPK]
            records = self.client.query(self._collection(name), filter=f"id in {chunk.tolist()}",
                                        output_fields=["id", "vector"], limit=len(chunk))
            keys.append(np.array([r["id"] for r in records], dtype=np.int64))
            values.append(np.array([r["vector"] for r in records], dtype=np.float32).reshape(-1, self.dims[name]))
        keys, values = np.concatenate(keys), np.concatenate(values)
        order = np.argsort(keys)
        if not np.array_equal(keys[order], wanted):
            raise CorruptIndexError(self._damaged(f"collection {self._collection(name)} lacks some of the ids asked for"))
        found = values[order][np.searchsorted(wanted, np.maximum(ids, 0))]  # -1 maps to a row it then zeroes
        return np.where((ids >= 0)[..., None], found, out).astype(np.float32, copy=False)

    def distances(self, name: str, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Squared Euclidean distances (Q, n) from each query (Q, d) to array `name`'s vectors of its item ids
        (Q, n), over their first d columns; padding (-1) gives inf. Reads only those vectors unless the whole array
        was read already."""
        if name in self._arrays:
            return sq_distances_by_id(self._arrays[name], queries, ids)
        ids = np.asarray(ids, dtype=np.int64)
        fetched = self.fetch(name, ids).reshape(-1, self.dims[name])
        positions = np.where(ids >= 0, np.arange(ids.size).reshape(ids.shape), -1)
        return sq_distances_by_id(fetched, queries, positions)

    def index(self, name: str) -> VectorIndex:
        """The Milvus index over array `name` (searches go to Milvus)."""
        cfg = self.index_config(name)
        if cfg is None:
            raise ValueError(f"array {name!r} has no index (indexed: {sorted(self.descriptor['indexes'])})")
        return MilvusIndex(self, name, cfg)

    def search(self, name: str, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Search the Milvus index over `name`: (squared L2 distances (nq, k), item ids (nq, k), -1 padded)."""
        cfg = self.index_config(name)
        if cfg is None:
            raise ValueError(f"array {name!r} has no index (indexed: {sorted(self.descriptor['indexes'])})")
        if k > _MAX_TOPK:
            raise ValueError(f"a Milvus search returns at most {_MAX_TOPK} hits, {k} were asked for")
        index_type, _, params = milvus_index_params(cfg, is_lite(self.uri))
        if is_lite(self.uri) and index_type == "FLAT":
            # Milvus Lite's exact search materialises (queries x segment rows x dim) float32 differences, and its
            # segments hold up to 100K rows: a few queries per call keep that near 512 MB.
            batch_size = min(batch_size, max(1, _LITE_FLAT_BYTES // (4 * self.dims[name] * 100_000)))
        if "ef" in params:
            params["ef"] = max(params["ef"], k)  # FAISS's HNSW explores max(efSearch, k) too; Milvus insists
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        # Rows a killed append left above the committed count are not part of the store.
        extra = {"filter": f"id < {len(self)}"} if self._leftovers else {}
        for start in range(0, len(queries), batch_size):
            hits = self.client.search(self._collection(name), data=list(queries[start : start + batch_size]), limit=k,
                                      anns_field="vector", search_params={"metric_type": "L2", "params": params},
                                      **extra)
            for row, found in enumerate(hits, start=start):
                ids[row, : len(found)] = [h["id"] for h in found]
                distances[row, : len(found)] = [h["distance"] for h in found]
        return distances, ids

    def _collection(self, name: str) -> str:
        try:
            return self.descriptor["collections"][name]
        except KeyError:
            raise KeyError(f"no array {name!r} in store {self.directory} (has {sorted(self.dims)})") from None

    def _count(self, collection: str, condition: str) -> int:
        return int(self.client.query(collection, filter=condition, output_fields=["count(*)"])[0]["count(*)"])

    def _query_range(self, name: str, fields: list[str], start: int) -> dict[str, Any]:
        """The committed rows with ids in [start, start + _MAX_TOPK), in id order: {"records": [...], field:
        values as arrays}."""
        stop = min(start + _MAX_TOPK, len(self))
        records = self.client.query(self._collection(name), filter=f"id >= {start} and id < {stop}",
                                    output_fields=fields, limit=stop - start)
        records = sorted(records, key=lambda r: r["id"])
        if [r["id"] for r in records] != list(range(start, stop)):
            raise CorruptIndexError(self._damaged(f"collection {self._collection(name)} lacks some of the ids "
                                                  f"{start}..{stop - 1}"))
        out: dict[str, Any] = {"records": records, "id": np.array([r["id"] for r in records], dtype=np.int64)}
        if "vector" in fields:
            out["vector"] = np.array([r["vector"] for r in records], dtype=np.float32).reshape(-1, self.dims[name])
        return out

    # Writing -----------------------------------------------------------------------------------------------
    def append(
        self,
        rows: Sequence[StoreRow],
        arrays: Mapping[str, np.ndarray],
        fingerprint: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
        save_index: bool = True,
    ) -> None:
        """Add `rows` and their features (as `FeatureStore.append`). The rows are inserted and flushed, then the
        count is committed; Milvus indexes them itself (`save_index` waits for that to finish)."""
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        staged = validate_append(self.dims, rows, arrays)
        count = len(self)
        self._delete_leftovers()
        try:
            for name, values in staged.items():
                metadata = name == self._metadata_array
                step = max(1, _INSERT_FLOATS // values.shape[1])
                for start in range(0, len(values), step):
                    records = [{"id": count + i, "vector": values[i],
                                **(asdict(rows[i]) if metadata else {})}
                               for i in range(start, min(start + step, len(values)))]
                    self.client.insert(self._collection(name), records)
                self.client.flush(self._collection(name))
            descriptor = {**self.descriptor, "count": count + len(rows),
                          "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "attributes": {**self.attributes, **json.loads(json.dumps(dict(attributes or {})))}}
            atomic_write_text(self.directory / DESCRIPTOR, json.dumps(descriptor, indent=2), durable=True)  # commit
        except OSError as exc:
            self._delete_leftovers()
            raise write_error(exc, self.directory / DESCRIPTOR) from None
        except BaseException:
            self._delete_leftovers()
            raise
        self.descriptor = descriptor
        self._rows = None
        for name, values in staged.items():
            if name in self._arrays:
                self._arrays[name] = np.concatenate([self._arrays[name], values])
        if save_index:
            self.save_indexes()

    def save_indexes(self, timeout_s: float = 3600.0) -> None:
        """Wait until Milvus has indexed every row of every collection.

        Milvus Lite builds segment indexes in the background after a flush and reports them finished at once
        (searches meanwhile scan the unindexed segments exhaustively); reloading a collection builds the missing
        ones before it returns. A reload can meet an index file the background build is still writing ("read
        error"); it is retried until the deadline."""
        deadline = time.monotonic() + timeout_s
        for collection in self.collections:
            if is_lite(self.uri):
                self._reload_lite(collection, deadline)
                continue
            while self.client.describe_index(collection, "vector").get("pending_index_rows", 0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Milvus at {self.uri} did not finish indexing {collection} in {timeout_s} s")
                time.sleep(0.2)

    def _reload_lite(self, collection: str, deadline: float) -> None:
        from pymilvus.exceptions import MilvusException

        while True:
            self.client.release_collection(collection)
            try:
                self.client.load_collection(collection)
                return
            except MilvusException as exc:
                if "read error" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def drop(self) -> None:
        """Delete the store's collections from Milvus (the descriptor file is left to its folder's owner)."""
        for collection in self.collections:
            if self.client.has_collection(collection):
                self.client.drop_collection(collection)

    def _delete_leftovers(self) -> None:
        """Delete the rows above the committed count (what a killed or failed append inserted)."""
        for collection in self.collections:
            if self.client.has_collection(collection):
                self.client.delete(collection, filter=f"id >= {len(self)}")
        self._leftovers = False

    def _damaged(self, problem: str) -> str:
        return (f"Milvus store {self.directory} ({self.uri}): {problem}; the index is damaged: rebuild it with "
                f"`fgia index SYSTEM DATA --out {self.directory} --store {self.uri} --force`")

    def __repr__(self) -> str:
        return f"MilvusStore({str(self.directory)!r}, uri={self.uri!r}, n={len(self)}, arrays={self.dims})"

