"""On-disk feature store: named feature arrays, optional vector indexes over them, and a metadata table.

Layout of a store directory::

    manifest.json            the commit: fingerprint, dims, counts, attributes, and every live file with its
                             size and SHA-256
    metadata.g<G>.csv        id,path,category,label,route,digest of the rows appended by generation G (label -1 =
                             unlabelled; route = the meta-category index the coarse classifier gave, -1 = none;
                             digest = the item's content hash)
    arrays/<name>.g<G>.npy   float32 (n, dim) values of the rows appended by generation G
    indexes/<name>.g<G>.fidx a saved `VectorIndex` over the first `index_count` rows of the array

Appends are append-only: each writes only its own rows (a segment per array and a metadata segment), so building
an index of N images writes each value once, whatever the number of appends. Every append writes its files under
a new generation number (each one atomically, flushed to disk), then commits by atomically replacing
`manifest.json`, which names every live file (and the caller's `attributes`, e.g. class names): a crash at any
point leaves the previous or the new generation whole. A vector index is saved when an append asks for it
(`save_index`, e.g. at the end of a build); until then the rows appended after it are added to the loaded index
in memory. The store only ever deletes files it named itself: a replaced index file and the half-written files of
the generation after the committed one. Opening checks counts and file sizes; `verify` also checks every
checksum. One writer at a time.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fgia.config import to_dict
from fgia.index.vector_index import (
    IndexConfig,
    IndexMismatchError,
    VectorIndex,
    create_index,
    sq_distances_by_id,
)
from fgia.runtime import atomic_path, atomic_write_text, write_error

MANIFEST = "manifest.json"
_FORMAT = "fgia-feature-store"
_FORMAT_VERSION = 3
_HASH_BLOCK = 1 << 20
_WRITE_BLOCK = 1 << 24
_METADATA_FIELDS = ["id", "path", "category", "label", "route", "digest"]


class CorruptIndexError(ValueError):
    """A store file is missing, truncated or altered; the message names the file and how to repair."""


@dataclass
class StoreRow:
    """One database item: its path, meta-category, label (-1 = unlabelled), route (the meta-category index the
    coarse classifier predicted, -1 = none) and content hash (may be empty)."""

    path: str
    category: str = ""
    label: int = -1
    route: int = -1
    digest: str = ""


def _fgia_version() -> str:
    try:
        return version("fgia")
    except PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _json_normal(value: Any) -> Any:
    """Tuples become lists etc., so a fingerprint compares equal to its JSON round trip."""
    return json.loads(json.dumps(value, sort_keys=True))


def fingerprint_diff(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    stored, expected = _json_normal(dict(stored)), _json_normal(dict(expected))
    return [
        f"{key}: store has {stored.get(key, '<missing>')!r}, expected {expected.get(key, '<missing>')!r}"
        for key in sorted(set(stored) | set(expected))
        if stored.get(key) != expected.get(key)
    ]


def _slug(name: str) -> str:
    # Names like "fine/birds" become safe, unique file stems.
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40]
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class FeatureStore:
    """A feature store directory; get one with `FeatureStore.create` or `FeatureStore.open`."""

    def __init__(self, directory: Path, manifest: dict[str, Any], device: str) -> None:
        self.directory = directory
        self.manifest = manifest
        self.device = device
        self._rows: list[StoreRow] | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._indexes: dict[str, VectorIndex] = {}

    # Construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path,
        fingerprint: Mapping[str, Any],
        dims: Mapping[str, int],
        indexes: Mapping[str, str | IndexConfig] | None = None,
        device: str = "auto",
        attributes: Mapping[str, Any] | None = None,
    ) -> FeatureStore:
        """Create an empty store with float arrays `dims` ({name: dim}) and indexes ({array name: factory}).

        `fingerprint` identifies what produced the features (model and PCA hashes, dims, ...); it is checked
        on every later open and append. `attributes` is the caller's JSON data committed with the store (and
        updated by `append`). Refuses a directory that already holds a store.
        """
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            raise FileExistsError(f"{directory} already holds a feature store; open it to append")
        if not dims:
            raise ValueError("a feature store needs at least one named array")
        indexes = dict(indexes or {})
        unknown = set(indexes) - set(dims)
        if unknown:
            raise ValueError(f"indexes over unknown arrays: {sorted(unknown)} (arrays: {sorted(dims)})")
        arrays = {}
        for name, dim in dims.items():
            if int(dim) != dim or dim < 1:
                raise ValueError(f"array {name!r}: dim must be a positive integer, got {dim!r}")
            cfg = indexes.get(name)
            cfg = IndexConfig(factory=cfg) if isinstance(cfg, str) else cfg
            if cfg is not None:
                create_index(int(dim), **{**to_dict(cfg), "device": "cpu"})  # fail now on a bad factory string
            arrays[name] = {"dim": int(dim), "segments": [], "index": None if cfg is None else to_dict(cfg),
                            "index_file": None, "index_count": 0}
        now = _now()
        manifest = {
            "format": _FORMAT, "format_version": _FORMAT_VERSION, "fgia_version": _fgia_version(),
            "fingerprint": _json_normal(dict(fingerprint)), "created": now, "updated": now,
            "generation": 0, "count": 0, "metadata": [], "arrays": arrays,
            "attributes": _json_normal(dict(attributes or {})), "files": {}, "superseded": [],
        }
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, directory) from None
        atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2), durable=True)
        return cls(directory, manifest, device)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        expected_fingerprint: Mapping[str, Any] | None = None,
        device: str = "auto",
        verify: bool = False,
    ) -> FeatureStore:
        """Open an existing store, checking that every file it names is there with its recorded size (and, with
        `verify`, its checksum); with `expected_fingerprint`, refuse (IndexMismatchError) one built differently.
        A damaged store raises CorruptIndexError naming the file."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no feature store at {directory} (missing {MANIFEST})")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptIndexError(_damaged(directory, path, f"is not valid JSON ({exc})")) from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise CorruptIndexError(_damaged(directory, path, f"is not a {_FORMAT} manifest"))
        if manifest.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path} is a version-{manifest.get('format_version')} {_FORMAT}; this fgia reads "
                             f"version {_FORMAT_VERSION}: rebuild the index with `fgia index ... --force`")
        store = cls(directory, manifest, device)
        store.check(checksums=verify)
        if expected_fingerprint is not None:
            store.check_fingerprint(expected_fingerprint)
        return store

    # Reading -----------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    @property
    def attributes(self) -> dict[str, Any]:
        """The caller's data committed with the current generation."""
        return self.manifest["attributes"]

    @property
    def dims(self) -> dict[str, int]:
        return {name: a["dim"] for name, a in self.manifest["arrays"].items()}

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def check_fingerprint(self, expected: Mapping[str, Any]) -> None:
        """Raise IndexMismatchError naming every fingerprint entry that differs from `expected`."""
        diff = fingerprint_diff(self.fingerprint, expected)
        if diff:
            raise IndexMismatchError(
                f"feature store {self.directory} was built with a different model/configuration: " + "; ".join(diff)
            )

    def check(self, checksums: bool = False) -> None:
        """Raise CorruptIndexError unless every live file is present with its recorded size, the array segments
        add up to the counts (and, with `checksums`, every file's SHA-256 matches)."""
        for name, recorded in sorted(self.manifest["files"].items()):
            path = self.directory / name
            if not path.is_file():
                raise CorruptIndexError(self._damaged(path, "is missing"))
            size = path.stat().st_size
            if size != recorded["size"]:
                raise CorruptIndexError(self._damaged(path, f"is {size} bytes, the manifest says {recorded['size']} "
                                                       "(truncated or replaced)"))
        for name, entry in self.manifest["arrays"].items():
            rows = 0
            for segment in entry["segments"]:
                shape = self._load(segment, mmap_mode="r").shape
                if shape[1:] != (entry["dim"],):
                    raise CorruptIndexError(self._damaged(self.directory / segment, f"holds shape {shape}, not "
                                                          f"{entry['dim']}-d rows of array {name!r}"))
                rows += shape[0]
            if rows != len(self):
                raise CorruptIndexError(self._damaged(self.directory / (entry["segments"] or [MANIFEST])[-1],
                                                      f"leaves array {name!r} with {rows} rows for {len(self)} items"))
        if checksums:
            for name, recorded in sorted(self.manifest["files"].items()):
                if file_digest(self.directory / name) != recorded["sha256"]:
                    raise CorruptIndexError(self._damaged(self.directory / name, "does not match its checksum (its "
                                                          "bytes changed after it was written)"))

    def rows(self) -> list[StoreRow]:
        """The metadata table; a row's position is its id."""
        if self._rows is None:
            rows: list[StoreRow] = []
            for segment in self.manifest["metadata"]:
                rows += self._read_rows(segment, first_id=len(rows))
            if len(rows) != len(self):
                raise CorruptIndexError(self._damaged(self.directory / MANIFEST, f"counts {len(self)} items, its "
                                                      f"metadata files hold {len(rows)}"))
            self._rows = rows
        return self._rows

    def labels(self) -> np.ndarray:
        """Labels of all rows (int64, -1 = unlabelled)."""
        return np.array([r.label for r in self.rows()], dtype=np.int64)

    def routes(self) -> np.ndarray:
        """Routes of all rows (int64, -1 = none)."""
        return np.array([r.route for r in self.rows()], dtype=np.int64)

    def array(self, name: str) -> np.ndarray:
        """Values of array `name`, (count, dim) float32, read into memory once."""
        if name not in self._arrays:
            entry = self._entry(name)
            segments = [self._load(segment, mmap_mode="r") for segment in entry["segments"]]
            self._arrays[name] = (np.concatenate(segments) if segments
                                  else np.empty((0, entry["dim"]), dtype=np.float32))
        return self._arrays[name]

    def fetch(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Vectors of array `name` for item ids of any shape (-1, padding, gives zeros): (*ids.shape, dim)."""
        ids = np.asarray(ids, dtype=np.int64)
        values = self.array(name)[np.maximum(ids, 0)]
        return np.where((ids >= 0)[..., None], values, 0.0).astype(np.float32, copy=False)

    def distances(self, name: str, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Squared Euclidean distances (Q, n) from each query (Q, d) to array `name`'s vectors of its item ids
        (Q, n), over their first d columns; padding (-1) gives inf."""
        return sq_distances_by_id(self.array(name), queries, ids)

    def index(self, name: str) -> VectorIndex:
        """The vector index over array `name` (loaded once, with every row); its ids are item ids."""
        entry = self._entry(name)
        if entry["index"] is None:
            raise ValueError(f"array {name!r} has no index; create the store with indexes={{{name!r}: 'Flat'}}")
        if name not in self._indexes:
            index = self._load_index(entry)
            if len(index) < len(self):  # rows appended after the saved index
                index.train(self.array(name))
                index.add(self.array(name)[len(index):])
            self._indexes[name] = index
        return self._indexes[name]

    def index_config(self, name: str) -> IndexConfig | None:
        """How the index over array `name` is built (None: the array has no index)."""
        cfg = self._entry(name)["index"]
        return None if cfg is None else IndexConfig(**cfg)

    def _load(self, name: str, mmap_mode: str | None = None) -> np.ndarray:
        try:
            return np.load(self.directory / name, mmap_mode=mmap_mode, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CorruptIndexError(self._damaged(self.directory / name, f"cannot be read as an array ({exc})")) from None

    def _load_index(self, entry: dict[str, Any]) -> VectorIndex:
        """A new in-memory copy of the saved index described by a manifest entry (an empty one before the first
        save)."""
        if entry["index_file"] is None:
            return create_index(entry["dim"], **{**entry["index"], "device": self.device})
        path = self.directory / entry["index_file"]
        try:
            index = VectorIndex.load(path, device=self.device, expected_dim=entry["dim"])
        except IndexMismatchError:
            raise
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            raise CorruptIndexError(self._damaged(path, f"cannot be read as an index ({exc})")) from None
        if len(index) != entry["index_count"]:
            raise CorruptIndexError(self._damaged(path, f"holds {len(index)} vectors, the manifest says "
                                                  f"{entry['index_count']}"))
        return index

    def search(self, name: str, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Search the index over `name`: (squared distances (nq, k), item ids (nq, k), -1 padded)."""
        return self.index(name).search(queries, k, batch_size)

    # Writing -----------------------------------------------------------------------------------------------
    def append(
        self,
        rows: Sequence[StoreRow],
        arrays: Mapping[str, np.ndarray],
        fingerprint: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
        save_index: bool = True,
    ) -> None:
        """Add `rows` and their features; `arrays` holds one row per entry of `rows` for every array of the store.

        With `fingerprint`, refuses (IndexMismatchError) a store built differently. `attributes` replace those
        keys of the committed attributes in the same commit. `save_index=False` leaves the saved vector indexes
        as they are (the new rows join them in memory, and on disk at the next append that saves): a build of
        many chunks saves its indexes once, at the end. Atomic: on any failure (a full disk included) the store
        stays as it was and its half-written files are removed.
        """
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        staged = validate_append(self.dims, rows, arrays)
        self._remove_leftovers()
        generation = self.manifest["generation"] + 1
        manifest = copy.deepcopy(self.manifest)
        count = len(self) + len(rows)
        files: dict[str, dict[str, Any]] = {}
        indexes: dict[str, VectorIndex] = {}
        try:
            for name, values in staged.items():
                entry = manifest["arrays"][name]
                if len(values):
                    segment = f"arrays/{_slug(name)}.g{generation}.npy"
                    files[segment] = self._write_array(segment, values)
                    entry["segments"].append(segment)
                if entry["index"] is not None and save_index and entry["index_count"] < count:
                    # A fresh copy, not the cached one: that must stay as committed if this append fails.
                    index = self._load_index(entry)
                    full = np.concatenate([self.array(name), values])
                    index.train(full)
                    index.add(full[len(index):])
                    entry["index_file"] = f"indexes/{_slug(name)}.g{generation}.fidx"
                    path = self.directory / entry["index_file"]
                    index.save(path)
                    files[entry["index_file"]] = {"size": path.stat().st_size, "sha256": file_digest(path)}
                    entry["index_count"] = count
                    indexes[name] = index
            if rows:
                segment = f"metadata.g{generation}.csv"
                files[segment] = self._write_rows(segment, rows, first_id=len(self))
                manifest["metadata"].append(segment)
            live = {**self._still_named(manifest), **files}
            manifest.update(generation=generation, count=count, updated=_now(), files=live,
                            superseded=sorted(set(self.manifest["files"]) - set(live)))
            manifest["attributes"].update(_json_normal(dict(attributes or {})))
            atomic_write_text(self.directory / MANIFEST, json.dumps(manifest, indent=2), durable=True)  # the commit
        except BaseException:
            self._remove_generation(generation)
            raise
        self.manifest = manifest
        self._rows = None
        for name, values in staged.items():
            # Read again from the segments when next asked for: growing an in-memory copy at every append would
            # copy the whole array each time (quadratic in a build of many chunks).
            self._arrays.pop(name, None)
            if name in indexes:
                self._indexes[name] = indexes[name]
            elif name in self._indexes:
                self._indexes[name].add(values)
        self._remove_leftovers()

    def save_indexes(self) -> None:
        """Commit the vector indexes with every row (a no-op when they are saved already)."""
        if any(e["index"] is not None and e["index_count"] < len(self) for e in self.manifest["arrays"].values()):
            self.append([], {name: np.empty((0, dim), np.float32) for name, dim in self.dims.items()})

    def _still_named(self, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Entries of the current `files` still named by the new `manifest` (everything but a replaced index)."""
        named = set(manifest["metadata"])
        for entry in manifest["arrays"].values():
            named |= set(entry["segments"]) | ({entry["index_file"]} if entry["index_file"] else set())
        return {n: v for n, v in self.manifest["files"].items() if n in named}

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["arrays"][name]
        except KeyError:
            raise KeyError(f"no array {name!r} in store {self.directory} (has {sorted(self.dims)})") from None

    def _write_array(self, name: str, values: np.ndarray) -> dict[str, Any]:
        """Write `values` as a .npy file with plain writes, so a full disk is an OSError naming its cause (never
        SIGBUS as with a memory-mapped sparse file, nor numpy's errno-less short-write error); returns its size
        and checksum."""
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(values))
        digest = hashlib.sha256()
        with atomic_path(self.directory / name, durable=True) as tmp, open(tmp, "wb") as f:
            flat = values.reshape(-1).view(np.uint8)
            for block in (header.getvalue(), *(flat[i : i + _WRITE_BLOCK] for i in range(0, len(flat), _WRITE_BLOCK))):
                f.write(block)
                digest.update(block)
            return {"size": f.tell(), "sha256": digest.hexdigest()}

    def _read_rows(self, name: str, first_id: int) -> list[StoreRow]:
        path = self.directory / name
        try:
            with open(path, newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f))
            rows = [StoreRow(path=r["path"], category=r["category"], label=int(r["label"]), route=int(r["route"]),
                             digest=r["digest"]) for r in records]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as exc:
            raise CorruptIndexError(self._damaged(path, f"cannot be read as the metadata table ({exc})")) from None
        for i, rec in enumerate(records):
            if rec["id"] != str(first_id + i):
                raise CorruptIndexError(self._damaged(path, f"row {i} has id {rec['id']}, expected {first_id + i}"))
        return rows

    def _write_rows(self, name: str, rows: Sequence[StoreRow], first_id: int) -> dict[str, Any]:
        path = self.directory / name
        with atomic_path(path, durable=True) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(_METADATA_FIELDS)
                # Plain tuples: dataclasses.asdict deep-copies every row, the largest cost of a build's commits.
                writer.writerows((first_id + i, r.path, r.category, r.label, r.route, r.digest)
                                 for i, r in enumerate(rows))
            return {"size": tmp.stat().st_size, "sha256": file_digest(tmp)}

    def _generation_files(self, generation: int) -> set[str]:
        """Every file an append of `generation` may write."""
        names = {f"metadata.g{generation}.csv"}
        for name in self.manifest["arrays"]:
            stem = _slug(name)
            names |= {f"arrays/{stem}.g{generation}.npy", f"indexes/{stem}.g{generation}.fidx"}
        return names

    def _remove_generation(self, generation: int) -> None:
        """Delete what an uncommitted append of `generation` wrote, its temporary files included."""
        self._delete(self._generation_files(generation) - set(self.manifest["files"]))

    def _remove_leftovers(self) -> None:
        """Delete the files the last commit superseded and whatever a killed append of the next one left."""
        self._delete(set(self.manifest["superseded"]) - set(self.manifest["files"]))
        self._remove_generation(self.manifest["generation"] + 1)
        self._delete({MANIFEST}, keep_target=True)

    def _delete(self, names: set[str], keep_target: bool = False) -> None:
        """Delete the named files (unless `keep_target`) and the temporary files `atomic_path` made for them."""
        for name in names:
            path = self.directory / name
            if not keep_target:
                path.unlink(missing_ok=True)
            if path.parent.is_dir():
                for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
                    tmp.unlink(missing_ok=True)

    def _damaged(self, path: Path, problem: str) -> str:
        return _damaged(self.directory, path, problem)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.directory)!r}, n={len(self)}, arrays={self.dims})"


def validate_append(dims: Mapping[str, int], rows: Sequence[StoreRow],
                    arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check an append against a store's arrays `dims` before its first write; returns {name: float32 values}."""
    for row in rows:
        if not isinstance(row, StoreRow):
            raise TypeError(f"rows must be StoreRow objects, got {type(row).__name__}")
    missing = set(dims) - set(arrays)
    unknown = set(arrays) - set(dims)
    if missing or unknown:
        raise IndexMismatchError(f"arrays do not match the store: missing {sorted(missing)}, unknown {sorted(unknown)}")
    staged = {}
    for name, dim in dims.items():
        values = np.asarray(arrays[name])
        if values.ndim != 2 or values.shape[1] != dim:
            raise IndexMismatchError(f"array {name!r}: the store holds {dim}-d features, got shape {values.shape}")
        if len(values) != len(rows):
            raise ValueError(f"array {name!r} has {len(values)} rows for {len(rows)} items")
        if not np.isfinite(values).all():
            raise ValueError(f"array {name!r} contains NaN or infinite values")
        staged[name] = np.ascontiguousarray(values, dtype=np.float32)
    return staged


def _damaged(store: Path, path: Path, problem: str) -> str:
    """The message of a CorruptIndexError: which file, what is wrong with it, and how to repair."""
    return (f"{path} {problem}; the index is damaged: run `fgia index verify {store}` for a full check, then rebuild "
            f"it with `fgia index SYSTEM DATA --out {store} --force` or restore it from a backup")
