"""FeatureStore: create / append / open, subset arrays, fingerprint and dim checks, interrupted appends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fgia.index import FeatureStore, IndexConfig, IndexMismatchError, StoreRow, VectorIndex

FINGERPRINT = {"model": "sha256:abc", "pca": "sha256:def", "dims": [8, 16]}


def _batch(rng, n, start=0):
    rows = [StoreRow(f"img/{start + i}.jpg", "birds" if i % 2 == 0 else "cars", i % 3 - 1) for i in range(n)]
    birds = np.flatnonzero([r.category == "birds" for r in rows])
    arrays = {"coarse": rng.normal(size=(n, 8)), "fine/birds": rng.normal(size=(len(birds), 16))}
    return rows, arrays, {"fine/birds": birds}


def _create(path):
    return FeatureStore.create(
        path, FINGERPRINT, {"coarse": 8, "fine/birds": 16},
        indexes={"coarse": "Flat", "fine/birds": IndexConfig("HNSW8", search_params="efSearch=32")}, device="cpu",
    )


def _snapshot(store):
    return (len(store), [r.path for r in store.rows()], np.array(store.array("coarse")),
            np.array(store.array("fine/birds")), store.ids("fine/birds"))


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
    assert isinstance(coarse, np.memmap) and coarse.dtype == np.float32
    np.testing.assert_allclose(coarse, np.concatenate([first[1]["coarse"], second[1]["coarse"]]), rtol=1e-6)
    bird_ids = reopened.ids("fine/birds")
    np.testing.assert_array_equal(bird_ids, [0, 2, 4, 6, 8, 10, 12, 14])
    assert all(reopened.rows()[i].category == "birds" for i in bird_ids)
    np.testing.assert_array_equal(reopened.labels(), [i % 3 - 1 for i in range(10)] + [i % 3 - 1 for i in range(6)])

    # Searching a stored vector finds its own metadata id first, in both indexes.
    _, ids = reopened.search("coarse", coarse[[3, 12]], k=3)
    np.testing.assert_array_equal(ids[:, 0], [3, 12])
    fine = reopened.array("fine/birds")
    _, ids = reopened.search("fine/birds", fine[[1, 6]], k=20)
    assert list(ids[:, 0]) == [2, 12] and (ids[:, 8:] == -1).all()
    assert type(reopened.index("fine/birds")).__name__ == "FaissIndex" and len(reopened.index("coarse")) == 16

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == 16 and manifest["fingerprint"] == FINGERPRINT and manifest["generation"] == 2
    assert manifest["arrays"]["fine/birds"]["index"]["factory"] == "HNSW8"
    assert _stray_files(tmp_path / "s") == set()


def _stray_files(directory):
    """Files in the store directory that its manifest does not name (older generations, crashed writes)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    files = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    live = {manifest["metadata"], "manifest.json"} | {
        v for a in manifest["arrays"].values() for v in (a["values"], a["ids"], a["index_file"])}
    assert set(manifest["files"]) == live - {"manifest.json"}  # the manifest lists every file it names
    return files - live


def test_mismatches_are_refused_with_what_differs(tmp_path):
    rng = np.random.default_rng(1)
    store = _create(tmp_path / "s")
    store.append(*_batch(rng, 4))
    with pytest.raises(IndexMismatchError, match=r"model: store has 'sha256:abc', expected 'sha256:zzz'"):
        FeatureStore.open(tmp_path / "s", expected_fingerprint={**FINGERPRINT, "model": "sha256:zzz"})
    rows, arrays, subsets = _batch(rng, 4)
    with pytest.raises(IndexMismatchError, match="pca"):
        store.append(rows, arrays, subsets, fingerprint={"model": "sha256:abc"})
    with pytest.raises(IndexMismatchError, match="holds 8-d features"):
        store.append(rows, {**arrays, "coarse": np.zeros((4, 9))}, subsets)
    with pytest.raises(IndexMismatchError, match="missing"):
        store.append(rows, {"coarse": arrays["coarse"]})
    with pytest.raises(ValueError, match="2 rows for 1 items"):
        store.append(rows, arrays, {"fine/birds": np.array([0])})
    with pytest.raises(ValueError, match="must index the 4 new rows"):
        store.append(rows, arrays, {"fine/birds": np.array([0, 7])})
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
