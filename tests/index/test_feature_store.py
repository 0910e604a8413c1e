"""FeatureStore: create / append / open, append-only segments, deferred index saves, fingerprint and dim checks,
interrupted appends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fgia.index import (
    FeatureStore,
    IndexConfig,
    IndexMismatchError,
    StoreRow,
    VectorIndex,
)

FINGERPRINT = {"model": "sha256:abc", "pca": "sha256:def", "dims": [8, 16]}


def _batch(rng, n, start=0):
    rows = [StoreRow(f"img/{start + i}.jpg", "birds" if i % 2 == 0 else "cars", i % 3 - 1, route=i % 2)
            for i in range(n)]
    return rows, {"coarse": rng.normal(size=(n, 8)), "fine/birds": rng.normal(size=(n, 16))}


def _create(path):
    return FeatureStore.create(
        path, FINGERPRINT, {"coarse": 8, "fine/birds": 16},
        indexes={"coarse": "Flat", "fine/birds": IndexConfig("HNSW8", search_params="efSearch=32")}, device="cpu",
    )


def _snapshot(store):
    return (len(store), [r.path for r in store.rows()], np.array(store.array("coarse")),
            np.array(store.array("fine/birds")), store.routes())


def test_append_open_search(tmp_path):
    rng = np.random.default_rng(0)
    store = _create(tmp_path / "s")
    assert len(store) == 0 and store.array("coarse").shape == (0, 8)
    first, second = _batch(rng, 10), _batch(rng, 6, start=10)
    store.append(*first, fingerprint=FINGERPRINT)
    store.append(*second)

    reopened = FeatureStore.open(tmp_path / "s", expected_fingerprint=FINGERPRINT, device="cpu")
    assert len(reopened) == 16 and [r.path for r in reopened.rows()] == [f"img/{i}.jpg" for i in range(16)]
    coarse = reopened.array("coarse")
    assert coarse.dtype == np.float32
    np.testing.assert_allclose(coarse, np.concatenate([first[1]["coarse"], second[1]["coarse"]]), rtol=1e-6)
    np.testing.assert_array_equal(reopened.labels(), [i % 3 - 1 for i in range(10)] + [i % 3 - 1 for i in range(6)])
    np.testing.assert_array_equal(reopened.routes(), [i % 2 for i in range(10)] + [i % 2 for i in range(6)])
    # fetch: vectors by item id, any shape, padding (-1) as zeros
    np.testing.assert_allclose(reopened.fetch("coarse", np.array([[12, -1]])), [[coarse[12], np.zeros(8)]])
    # distances: squared L2 from each query to its ids' vectors, padding as inf
    np.testing.assert_allclose(reopened.distances("coarse", coarse[[3]], np.array([[3, 12, -1]])),
                               [[0, ((coarse[3] - coarse[12]) ** 2).sum(), np.inf]], rtol=1e-5)

    # Searching a stored vector finds its own id first, in both indexes.
    _, ids = reopened.search("coarse", coarse[[3, 12]], k=3)
    np.testing.assert_array_equal(ids[:, 0], [3, 12])
    fine = reopened.array("fine/birds")
    _, ids = reopened.search("fine/birds", fine[[1, 6]], k=20)
    assert list(ids[:, 0]) == [1, 6] and (ids[:, 16:] == -1).all()
    assert type(reopened.index("fine/birds")).__name__ == "FaissIndex" and len(reopened.index("coarse")) == 16

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == 16 and manifest["fingerprint"] == FINGERPRINT and manifest["generation"] == 2
    assert manifest["arrays"]["fine/birds"]["index"]["factory"] == "HNSW8"
    assert _stray_files(tmp_path / "s") == set()


def _stray_files(directory):
    """Files in the store directory that its manifest does not name (replaced indexes, crashed writes)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    files = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    live = {*manifest["metadata"], "manifest.json"}
    for entry in manifest["arrays"].values():
        live |= {*entry["segments"], *([entry["index_file"]] if entry["index_file"] else [])}
    assert set(manifest["files"]) == live - {"manifest.json"}  # the manifest lists every file it names
    return files - live


def test_each_append_writes_only_its_own_rows_and_indexes_are_saved_when_asked(tmp_path):
    rng = np.random.default_rng(3)
    store = _create(tmp_path / "s")
    batches = [_batch(rng, 5, start=5 * i) for i in range(3)]
    sizes = []
    for rows, arrays in batches:
        store.append(rows, arrays, save_index=False)
        manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
        sizes.append(sum(v["size"] for n, v in manifest["files"].items() if n.startswith("arrays/")))
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0] == sizes[0]  # the same bytes per append: no copies
    assert manifest["arrays"]["coarse"]["index_file"] is None and _stray_files(tmp_path / "s") == set()
    # Not saved yet: a reader builds the index from the rows it has, in memory.
    reopened = FeatureStore.open(tmp_path / "s", device="cpu")
    assert len(reopened.index("coarse")) == 15
    store.save_indexes()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["arrays"]["coarse"]["index_count"] == 15 and manifest["generation"] == 4
    store.save_indexes()  # nothing left to save: no new generation
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["generation"] == 4
    store.append(*_batch(rng, 2, start=15))  # a saving append replaces the index file, never the segments
    assert _stray_files(tmp_path / "s") == set()
    final = FeatureStore.open(tmp_path / "s", device="cpu", verify=True)
    assert len(final.index("coarse")) == len(final) == 17


def test_mismatches_are_refused_with_what_differs(tmp_path):
    rng = np.random.default_rng(1)
    store = _create(tmp_path / "s")
    store.append(*_batch(rng, 4))
    with pytest.raises(IndexMismatchError, match=r"model: store has 'sha256:abc', expected 'sha256:zzz'"):
        FeatureStore.open(tmp_path / "s", expected_fingerprint={**FINGERPRINT, "model": "sha256:zzz"})
    rows, arrays = _batch(rng, 4)
    with pytest.raises(IndexMismatchError, match="pca"):
        store.append(rows, arrays, fingerprint={"model": "sha256:abc"})
    with pytest.raises(IndexMismatchError, match="holds 8-d features"):
        store.append(rows, {**arrays, "coarse": np.zeros((4, 9))})
    with pytest.raises(IndexMismatchError, match="missing"):
        store.append(rows, {"coarse": arrays["coarse"]})
    with pytest.raises(ValueError, match="2 rows for 4 items"):
        store.append(rows, {**arrays, "fine/birds": arrays["fine/birds"][:2]})
    with pytest.raises(FileExistsError):
        _create(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="no feature store"):
        FeatureStore.open(tmp_path / "nothing")
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        FeatureStore.create(tmp_path / "t", FINGERPRINT, {"x": 4}, indexes={"x": "Nonsense"})
    # The failed appends changed nothing.
    assert len(FeatureStore.open(tmp_path / "s")) == 4


@pytest.mark.parametrize("fail_at", ["index save", "manifest write"])
@pytest.mark.parametrize("killed", [False, True], ids=["exception", "killed"])
def test_interrupted_append_leaves_previous_store_readable(tmp_path, monkeypatch, fail_at, killed):
    rng = np.random.default_rng(2)
    store = _create(tmp_path / "s")
    store.append(*_batch(rng, 6))
    before = _snapshot(FeatureStore.open(tmp_path / "s", device="cpu"))
    user_files = {"notes.g9.npy": b"mine", "arrays/mine.tmp": b"also mine"}
    for name, data in user_files.items():
        (tmp_path / "s" / name).write_bytes(data)

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if fail_at == "index save":
        monkeypatch.setattr(VectorIndex, "save", crash)
    else:
        monkeypatch.setattr("fgia.index.store.atomic_write_text", crash)
    if killed:  # a killed process runs no clean-up
        monkeypatch.setattr(FeatureStore, "_remove_generation", lambda self, generation: None)
    with pytest.raises(OSError, match="simulated crash"):
        store.append(*_batch(rng, 5, start=6))
    monkeypatch.undo()
    assert bool(_stray_files(tmp_path / "s") - set(user_files)) == killed  # half-written files only when killed

    after = FeatureStore.open(tmp_path / "s", device="cpu", verify=True)
    for got, want in zip(_snapshot(after), before):
        np.testing.assert_array_equal(got, want)
    assert len(after.index("coarse")) == 6
    # The store object that failed is still consistent, and the next append succeeds and cleans up after the
    # killed one, deleting nothing it did not write itself.
    assert len(store.index("coarse")) == 6
    store.append(*_batch(rng, 5, start=6))
    final = FeatureStore.open(tmp_path / "s", device="cpu", verify=True)
    assert len(final) == 11 and len(final.index("coarse")) == 11 and final.array("coarse").shape == (11, 8)
    assert _stray_files(tmp_path / "s") == set(user_files)
    assert all((tmp_path / "s" / name).read_bytes() == data for name, data in user_files.items())
