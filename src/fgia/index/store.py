"""On-disk feature store: named feature arrays, optional vector indexes over them, and a metadata table.

Layout of a store directory::

    manifest.json            fingerprint, dims, index configs, counts, file names of the live generation
    metadata.g<G>.csv        id,path,category,label (label -1 = unlabelled)
    arrays/<name>.g<G>.npy   float32 (n, dim) values, memory-mapped on read
    arrays/<name>.ids.g<G>.npy   int64 metadata ids of those rows (an array may cover a subset, e.g. one category)
    indexes/<name>.g<G>.fidx     a saved `VectorIndex` over the array

Every append writes the files it changes under a new generation number (each one atomically), then commits by
atomically replacing `manifest.json`, then deletes the files of older generations. An append interrupted at any
point therefore leaves the previous store fully readable; its half-written files are removed by the next append.
One writer at a time.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fgia.config import to_dict
from fgia.index.vector_index import IndexConfig, IndexMismatchError, VectorIndex, create_index
from fgia.runtime import atomic_path, atomic_write_text

_FORMAT = "fgia-feature-store"
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_COPY_ROWS = 65536  # rows copied per step when extending an array: bounded memory whatever N is
_GENERATION_FILE = re.compile(r"\.g\d+\.(npy|csv|fidx)$|\.tmp$")  # .tmp: left by a killed process


@dataclass
class StoreRow:
    """One database item: its image path, meta-category and label (-1 = unlabelled)."""

    path: str
    category: str = ""
    label: int = -1


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
    ) -> FeatureStore:
        """Create an empty store with float arrays `dims` ({name: dim}) and indexes ({array name: factory}).

        `fingerprint` identifies what produced the features (model and PCA hashes, dims, ...); it is checked
        on every later open and append. Refuses a directory that already holds a store.
        """
        directory = Path(directory)
        if (directory / _MANIFEST).exists():
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
        }
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / _MANIFEST, json.dumps(manifest, indent=2))
        return cls(directory, manifest, device)

    @classmethod
    def open(
        cls, directory: str | Path, expected_fingerprint: Mapping[str, Any] | None = None, device: str = "auto"
    ) -> FeatureStore:
        """Open an existing store; with `expected_fingerprint`, refuse (IndexMismatchError) one built differently."""
        directory = Path(directory)
        path = directory / _MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no feature store at {directory} (missing {_MANIFEST})")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != _FORMAT or manifest.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path} is not a version-{_FORMAT_VERSION} {_FORMAT} manifest")
        store = cls(directory, manifest, device)
        if expected_fingerprint is not None:
            store.check_fingerprint(expected_fingerprint)
        return store

    # Reading -----------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

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
        return np.load(self.directory / entry["values"], mmap_mode="r")

    def ids(self, name: str) -> np.ndarray:
        """Metadata ids of the rows of array `name` (int64)."""
        entry = self._entry(name)
        return np.empty(0, np.int64) if entry["ids"] is None else np.load(self.directory / entry["ids"])

    def index(self, name: str) -> VectorIndex:
        """The vector index over array `name` (loaded once); its ids are positions in `array(name)`."""
        entry = self._entry(name)
        if entry["index"] is None:
            raise ValueError(f"array {name!r} has no index; create the store with indexes={{{name!r}: 'Flat'}}")
        if name not in self._indexes:
            self._indexes[name] = self._load_index(entry)
        return self._indexes[name]

    def _load_index(self, entry: dict[str, Any]) -> VectorIndex:
        """A new in-memory copy of the committed index described by a manifest entry."""
        if entry["index_file"] is None:
            return create_index(entry["dim"], **{**entry["index"], "device": self.device})
        return VectorIndex.load(self.directory / entry["index_file"], device=self.device, expected_dim=entry["dim"])

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
    ) -> None:
        """Add `rows` and their features; `arrays` must hold every array of the store.

        `arrays[name]` has one row per entry of `rows`, or, when `subsets[name]` (positions into `rows`) is
        given, one row per subset entry. With `fingerprint`, refuses (IndexMismatchError) a store built
        differently. Atomic: on any failure the store stays as it was.
        """
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        subsets = dict(subsets or {})
        staged = self._validate(rows, arrays, subsets)
        self._remove_unreferenced()
        generation = self.manifest["generation"] + 1
        manifest = copy.deepcopy(self.manifest)
        base = len(self)
        new_indexes: dict[str, VectorIndex] = {}
        for name, (values, positions) in staged.items():
            if not len(values):
                continue
            entry = manifest["arrays"][name]
            stem = f"arrays/{_slug(name)}"
            entry["values"] = self._extend(entry["values"], values, f"{stem}.g{generation}.npy")
            entry["ids"] = self._extend(entry["ids"], positions + base, f"{stem}.ids.g{generation}.npy")
            entry["count"] += len(values)
            if entry["index"] is not None:
                # A fresh copy, not the cached one: that must stay as committed if this append fails.
                index = self._load_index(entry)
                index.train(values)
                index.add(values)
                entry["index_file"] = f"indexes/{_slug(name)}.g{generation}.fidx"
                index.save(self.directory / entry["index_file"])
                new_indexes[name] = index
        manifest["metadata"] = f"metadata.g{generation}.csv"
        self._write_rows(manifest["metadata"], [*self.rows(), *rows])
        manifest.update(generation=generation, count=base + len(rows), updated=_now())
        atomic_write_text(self.directory / _MANIFEST, json.dumps(manifest, indent=2))  # the commit point
        self.manifest = manifest
        self._rows = None
        self._indexes.update(new_indexes)
        self._remove_unreferenced()

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

    def _extend(self, old_file: str | None, new: np.ndarray, new_file: str) -> str:
        """Write old rows + `new` to `new_file`, copying the old rows in bounded chunks."""
        old = None if old_file is None else np.load(self.directory / old_file, mmap_mode="r")
        n_old = 0 if old is None else len(old)
        target = self.directory / new_file
        with atomic_path(target) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=new.dtype, shape=(n_old + len(new), *new.shape[1:]))
            for start in range(0, n_old, _COPY_ROWS):
                stop = min(start + _COPY_ROWS, n_old)
                out[start:stop] = old[start:stop]
            out[n_old:] = new
            out.flush()
            del out
        return new_file

    def _read_rows(self, name: str | None) -> list[StoreRow]:
        if name is None:
            return []
        with open(self.directory / name, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        for i, rec in enumerate(records):
            if int(rec["id"]) != i:
                raise ValueError(f"{self.directory / name}: row {i} has id {rec['id']} (table corrupted)")
        return [StoreRow(path=r["path"], category=r["category"], label=int(r["label"])) for r in records]

    def _write_rows(self, name: str, rows: Sequence[StoreRow]) -> None:
        with atomic_path(self.directory / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "path", "category", "label"])
            writer.writeheader()
            writer.writerows({"id": i, **asdict(r)} for i, r in enumerate(rows))

    def _remove_unreferenced(self) -> None:
        """Delete generation files the manifest does not name (older generations, interrupted appends)."""
        live = {self.manifest["metadata"]}
        for entry in self.manifest["arrays"].values():
            live |= {entry["values"], entry["ids"], entry["index_file"]}
        for path in self.directory.rglob("*"):
            rel = path.relative_to(self.directory).as_posix()
            if path.is_file() and _GENERATION_FILE.search(rel) and rel not in live:
                path.unlink()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.directory)!r}, n={len(self)}, arrays={self.dims})"

