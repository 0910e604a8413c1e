"""On-disk feature store: named feature arrays, optional vector indexes over them, and a metadata table.

Layout of a store directory::

    manifest.json            the commit: fingerprint, dims, counts, attributes, and every live file with its
                             size and SHA-256
    metadata.g<G>.csv        id,path,category,label,digest (label -1 = unlabelled; digest = the item's content hash)
    arrays/<name>.g<G>.npy   float32 (n, dim) values, memory-mapped on read
    arrays/<name>.ids.g<G>.npy   int64 metadata ids of those rows (an array may cover a subset, e.g. one category)
    indexes/<name>.g<G>.fidx     a saved `VectorIndex` over the array

Every append writes the files it changes under a new generation number (each one atomically, flushed to disk),
then commits by atomically replacing `manifest.json`, then deletes the files the previous generation no longer
needs. The manifest names every file a reader needs (and the caller's `attributes`, e.g. class names), so a
crash at any point leaves the previous or the new generation whole. The store only ever deletes files it named
itself: the superseded generation's and the half-written files of the generation after the committed one.
Opening checks counts and file sizes; `verify` also checks every checksum. One writer at a time.
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
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fgia.config import to_dict
from fgia.index.vector_index import IndexConfig, IndexMismatchError, VectorIndex, create_index
from fgia.runtime import atomic_path, atomic_write_text, write_error

MANIFEST = "manifest.json"
_FORMAT = "fgia-feature-store"
_FORMAT_VERSION = 2
_COPY_ROWS = 65536  # rows copied per step when extending an array: bounded memory whatever N is
_HASH_BLOCK = 1 << 20
_METADATA_FIELDS = ["id", "path", "category", "label", "digest"]


class CorruptIndexError(ValueError):
    """A store file is missing, truncated or altered; the message names the file and how to repair."""


@dataclass
class StoreRow:
    """One database item: its path, meta-category, label (-1 = unlabelled) and content hash (may be empty)."""

    path: str
    category: str = ""
    label: int = -1
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


def _fingerprint_diff(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
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
            arrays[name] = {"dim": int(dim), "count": 0, "values": None, "ids": None,
                            "index": None if cfg is None else to_dict(cfg), "index_file": None}
        now = _now()
        manifest = {
            "format": _FORMAT, "format_version": _FORMAT_VERSION, "fgia_version": _fgia_version(),
            "fingerprint": _json_normal(dict(fingerprint)), "created": now, "updated": now,
            "generation": 0, "count": 0, "metadata": None, "arrays": arrays,
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
        diff = _fingerprint_diff(self.fingerprint, expected)
        if diff:
            raise IndexMismatchError(
                f"feature store {self.directory} was built with a different model/configuration: " + "; ".join(diff)
            )

    def check(self, checksums: bool = False) -> None:
        """Raise CorruptIndexError unless every live file is present with its recorded size, each array's header
        agrees with the counts (and, with `checksums`, every file's SHA-256 matches)."""
        for name, recorded in sorted(self.manifest["files"].items()):
            path = self.directory / name
            if not path.is_file():
                raise CorruptIndexError(self._damaged(path, "is missing"))
            size = path.stat().st_size
            if size != recorded["size"]:
                raise CorruptIndexError(self._damaged(path, f"is {size} bytes, the manifest says {recorded['size']} "
                                                       "(truncated or replaced)"))
        for name, entry in self.manifest["arrays"].items():
            for key, rows in (("values", entry["count"]), ("ids", entry["count"])):
                if entry[key] is not None:
                    shape = self._load(entry[key], mmap_mode="r").shape
                    if shape[0] != rows or (key == "values" and shape[1:] != (entry["dim"],)):
                        raise CorruptIndexError(self._damaged(self.directory / entry[key], f"holds shape {shape}, the "
                                                         f"manifest says {rows} rows of array {name!r}"))
        if checksums:
            for name, recorded in sorted(self.manifest["files"].items()):
                if file_digest(self.directory / name) != recorded["sha256"]:
                    raise CorruptIndexError(self._damaged(self.directory / name, "does not match its checksum (its "
                                                     "bytes changed after it was written)"))

    def rows(self) -> list[StoreRow]:
        """The metadata table; a row's position is its id."""
        if self._rows is None:
            self._rows = self._read_rows(self.manifest["metadata"])
        return self._rows

    def labels(self) -> np.ndarray:
        """Labels of all rows (int64, -1 = unlabelled)."""
        return np.array([r.label for r in self.rows()], dtype=np.int64)

    def array(self, name: str) -> np.ndarray:
        """Values of array `name`, (count, dim) float32, memory-mapped read-only."""
        entry = self._entry(name)
        if entry["values"] is None:
            return np.empty((0, entry["dim"]), dtype=np.float32)
        return self._load(entry["values"], mmap_mode="r")

    def ids(self, name: str) -> np.ndarray:
        """Metadata ids of the rows of array `name` (int64)."""
        entry = self._entry(name)
        return np.empty(0, np.int64) if entry["ids"] is None else self._load(entry["ids"])

    def index(self, name: str) -> VectorIndex:
        """The vector index over array `name` (loaded once); its ids are positions in `array(name)`."""
        entry = self._entry(name)
        if entry["index"] is None:
            raise ValueError(f"array {name!r} has no index; create the store with indexes={{{name!r}: 'Flat'}}")
        if name not in self._indexes:
            self._indexes[name] = self._load_index(entry)
        return self._indexes[name]

    def _load(self, name: str, mmap_mode: str | None = None) -> np.ndarray:
        try:
            return np.load(self.directory / name, mmap_mode=mmap_mode, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CorruptIndexError(self._damaged(self.directory / name, f"cannot be read as an array ({exc})")) from None

    def _load_index(self, entry: dict[str, Any]) -> VectorIndex:
        """A new in-memory copy of the committed index described by a manifest entry."""
        if entry["index_file"] is None:
            return create_index(entry["dim"], **{**entry["index"], "device": self.device})
        path = self.directory / entry["index_file"]
        try:
            return VectorIndex.load(path, device=self.device, expected_dim=entry["dim"])
        except IndexMismatchError:
            raise
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            raise CorruptIndexError(self._damaged(path, f"cannot be read as an index ({exc})")) from None

    def search(self, name: str, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Search the index over `name`: (distances (nq, k), metadata ids (nq, k), -1 padded)."""
        distances, positions = self.index(name).search(queries, k, batch_size)
        ids = self.ids(name)
        return distances, np.where(positions >= 0, ids[np.maximum(positions, 0)] if len(ids) else -1, -1)

    # Writing -----------------------------------------------------------------------------------------------
    def append(
        self,
        rows: Sequence[StoreRow],
        arrays: Mapping[str, np.ndarray],
        subsets: Mapping[str, np.ndarray] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Add `rows` and their features; `arrays` must hold every array of the store.

        `arrays[name]` has one row per entry of `rows`, or, when `subsets[name]` (positions into `rows`) is
        given, one row per subset entry. With `fingerprint`, refuses (IndexMismatchError) a store built
        differently. `attributes` replace those keys of the committed attributes in the same commit. Atomic: on
        any failure (a full disk included) the store stays as it was and its half-written files are removed.
        """
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        subsets = dict(subsets or {})
        staged = self._validate(rows, arrays, subsets)
        self._remove_leftovers()
        generation = self.manifest["generation"] + 1
        manifest = copy.deepcopy(self.manifest)
        base = len(self)
        new_indexes: dict[str, VectorIndex] = {}
        files: dict[str, dict[str, Any]] = {}
        try:
            for name, (values, positions) in staged.items():
                if not len(values):
                    continue
                entry = manifest["arrays"][name]
                stem = f"arrays/{_slug(name)}"
                entry["values"] = self._extend(entry["values"], values, f"{stem}.g{generation}.npy", files)
                entry["ids"] = self._extend(entry["ids"], positions + base, f"{stem}.ids.g{generation}.npy", files)
                entry["count"] += len(values)
                if entry["index"] is not None:
                    # A fresh copy, not the cached one: that must stay as committed if this append fails.
                    index = self._load_index(entry)
                    index.train(values)
                    index.add(values)
                    entry["index_file"] = f"indexes/{_slug(name)}.g{generation}.fidx"
                    path = self.directory / entry["index_file"]
                    index.save(path)
                    files[entry["index_file"]] = {"size": path.stat().st_size, "sha256": file_digest(path)}
                    new_indexes[name] = index
            manifest["metadata"] = f"metadata.g{generation}.csv"
            files[manifest["metadata"]] = self._write_rows(manifest["metadata"], [*self.rows(), *rows])
            live = {**self._unchanged_files(manifest), **files}
            manifest.update(generation=generation, count=base + len(rows), updated=_now(), files=live,
                            superseded=sorted(set(self.manifest["files"]) - set(live)))
            manifest["attributes"].update(_json_normal(dict(attributes or {})))
            atomic_write_text(self.directory / MANIFEST, json.dumps(manifest, indent=2), durable=True)  # the commit
        except BaseException:
            self._remove_generation(generation)
            raise
        self.manifest = manifest
        self._rows = None
        self._indexes.update(new_indexes)
        self._remove_leftovers()

    def _unchanged_files(self, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Entries of the current `files` still named by the new `manifest` (arrays this append did not touch)."""
        named = {n for a in manifest["arrays"].values() for n in (a["values"], a["ids"], a["index_file"]) if n}
        return {n: v for n, v in self.manifest["files"].items() if n in named}

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["arrays"][name]
        except KeyError:
            raise KeyError(f"no array {name!r} in store {self.directory} (has {sorted(self.dims)})") from None

    def _validate(
        self, rows: Sequence[StoreRow], arrays: Mapping[str, np.ndarray], subsets: Mapping[str, np.ndarray]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Check everything before the first write; returns {name: (float32 values, positions into rows)}."""
        for row in rows:
            if not isinstance(row, StoreRow):
                raise TypeError(f"rows must be StoreRow objects, got {type(row).__name__}")
        missing = set(self.dims) - set(arrays)
        unknown = (set(arrays) | set(subsets)) - set(self.dims)
        if missing or unknown:
            raise IndexMismatchError(
                f"arrays do not match the store: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        staged = {}
        for name, dim in self.dims.items():
            values = np.asarray(arrays[name])
            positions = np.asarray(subsets.get(name, np.arange(len(rows))), dtype=np.int64)
            if values.ndim != 2 or values.shape[1] != dim:
                raise IndexMismatchError(f"array {name!r}: the store holds {dim}-d features, got shape {values.shape}")
            if len(values) != len(positions):
                raise ValueError(f"array {name!r} has {len(values)} rows for {len(positions)} items")
            if len(positions) and (positions.min() < 0 or positions.max() >= len(rows)):
                raise ValueError(f"subset of {name!r} must index the {len(rows)} new rows")
            if not np.isfinite(values).all():
                raise ValueError(f"array {name!r} contains NaN or infinite values")
            staged[name] = (np.ascontiguousarray(values, dtype=np.float32), positions)
        return staged

    def _extend(self, old_file: str | None, new: np.ndarray, new_file: str, files: dict[str, dict[str, Any]]) -> str:
        """Write old rows + `new` to `new_file` with plain writes (a full disk is an error, never SIGBUS as with
        a memory-mapped sparse file), copying the old rows in bounded chunks; records its size and checksum."""
        old = None if old_file is None else self._load(old_file, mmap_mode="r")
        n_old = 0 if old is None else len(old)
        header = {"descr": np.lib.format.dtype_to_descr(new.dtype), "fortran_order": False,
                  "shape": (n_old + len(new), *new.shape[1:])}
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, header)
        digest = hashlib.sha256()
        with atomic_path(self.directory / new_file, durable=True) as tmp, open(tmp, "wb") as f:
            chunks = (old[start : start + _COPY_ROWS] for start in range(0, n_old, _COPY_ROWS))
            for data in (head.getvalue(), *(np.ascontiguousarray(c).tobytes() for c in chunks), new.tobytes()):
                f.write(data)
                digest.update(data)
            size = f.tell()
        files[new_file] = {"size": size, "sha256": digest.hexdigest()}
        return new_file

    def _read_rows(self, name: str | None) -> list[StoreRow]:
        if name is None:
            return []
        path = self.directory / name
        try:
            with open(path, newline="", encoding="utf-8") as f:
                records = list(csv.DictReader(f))
            rows = [StoreRow(path=r["path"], category=r["category"], label=int(r["label"]), digest=r["digest"])
                    for r in records]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as exc:
            raise CorruptIndexError(self._damaged(path, f"cannot be read as the metadata table ({exc})")) from None
        if len(rows) != len(self):
            raise CorruptIndexError(self._damaged(path, f"has {len(rows)} rows, the manifest says {len(self)}"))
        for i, rec in enumerate(records):
            if rec["id"] != str(i):
                raise CorruptIndexError(self._damaged(path, f"row {i} has id {rec['id']}"))
        return rows

    def _write_rows(self, name: str, rows: Sequence[StoreRow]) -> dict[str, Any]:
        path = self.directory / name
        with atomic_path(path, durable=True) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=_METADATA_FIELDS)
                writer.writeheader()
                writer.writerows({"id": i, **asdict(r)} for i, r in enumerate(rows))
            recorded = {"size": tmp.stat().st_size, "sha256": file_digest(tmp)}
        return recorded

    def _generation_files(self, generation: int) -> set[str]:
        """Every file an append of `generation` may write."""
        names = {f"metadata.g{generation}.csv"}
        for name in self.manifest["arrays"]:
            stem = _slug(name)
            names |= {f"arrays/{stem}.g{generation}.npy", f"arrays/{stem}.ids.g{generation}.npy",
                      f"indexes/{stem}.g{generation}.fidx"}
        return names

    def _remove_generation(self, generation: int) -> None:
        """Delete what an uncommitted append of `generation` wrote, its temporary files included."""
        self._delete(self._generation_files(generation) - set(self.manifest["files"]))

    def _remove_leftovers(self) -> None:
        """Delete the superseded generation's files and whatever a killed append of the next one left."""
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


def _damaged(store: Path, path: Path, problem: str) -> str:
    """The message of a CorruptIndexError: which file, what is wrong with it, and how to repair."""
    return (f"{path} {problem}; the index is damaged: run `fgia index verify {store}` for a full check, then rebuild "
            f"it with `fgia index SYSTEM DATA --out {store} --force` or restore it from a backup")
