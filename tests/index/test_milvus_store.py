"""The Milvus store (Milvus Lite file) against the FAISS store: same answers, same contract."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from fgia.index import (  # noqa: E402
    CorruptIndexError,
    FeatureStore,
    IndexConfig,
    IndexMismatchError,
    MilvusStore,
    StoreRow,
    create_store,
    open_store,
)
from fgia.index.milvus_store import milvus_index_params, milvus_uri  # noqa: E402

N = 2000
DIMS = {"coarse": 32, "fine/birds": 96, "box": 4}


@pytest.fixture(scope="module")
def data() -> tuple[list[StoreRow], dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    # Clustered vectors, like real features: IVF and HNSW face neighbours that are close together.
    centres = rng.standard_normal((40, DIMS["coarse"]))
    coarse = centres[rng.integers(0, 40, N)] + 0.5 * rng.standard_normal((N, DIMS["coarse"]))
    arrays = {"coarse": coarse, "fine/birds": rng.standard_normal((N, 96)), "box": rng.random((N, 4))}
    arrays = {name: values.astype(np.float32) for name, values in arrays.items()}
    rows = [StoreRow(path=f"images/{i}.jpg", category="birds", label=i % 7 - 1, route=i % 3, digest=f"{i:064x}")
            for i in range(N)]
    queries = (coarse[rng.choice(N, 100, replace=False)] + 0.3 * rng.standard_normal((100, 32))).astype(np.float32)
    return rows, arrays, queries


def _milvus(tmp_path, rows, arrays, factory: str, search_params: str = "") -> MilvusStore:
    store = MilvusStore.create(tmp_path / "index", str(tmp_path / "fgia.db"), {"model": "m1"}, DIMS,
                               indexes={"coarse": IndexConfig(factory=factory, search_params=search_params)},
                               attributes={"classes": ["a", "b"]})
    store.append(rows[:700], {k: v[:700] for k, v in arrays.items()}, save_index=False)
    store.append(rows[700:], {k: v[700:] for k, v in arrays.items()})
    return store


def test_flat_gives_the_faiss_top10_for_every_query(tmp_path, data):
    rows, arrays, queries = data
    faiss_store = FeatureStore.create(tmp_path / "faiss", {"model": "m1"}, DIMS, indexes={"coarse": "Flat"},
                                      device="cpu")
    faiss_store.append(rows, arrays)
    milvus = _milvus(tmp_path, rows, arrays, "Flat")
    expected_d, expected = faiss_store.search("coarse", queries, 10)
    distances, ids = milvus.search("coarse", queries, 10)
    assert np.array_equal(ids, expected)
    np.testing.assert_allclose(distances, expected_d, rtol=1e-4, atol=1e-4)
    # The engine's index view answers the same.
    assert np.array_equal(milvus.index("coarse").search(queries, 10)[1], expected)


@pytest.mark.parametrize("factory, params", [("IVF16,Flat", "nprobe=6"), ("IVF16,SQ8", "nprobe=6"),
                                             ("HNSW16", "efSearch=64")])
def test_ann_indexes_reach_recall_095(tmp_path, data, factory, params):
    rows, arrays, queries = data
    exact = np.argsort(((queries[:, None] - arrays["coarse"][None]) ** 2).sum(-1), axis=1)[:, :10]
    _, ids = _milvus(tmp_path, rows, arrays, factory, params).search("coarse", queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.95, f"{factory} {params}: recall@10 {recall}"


def test_ann_search_params_reach_milvus(tmp_path):
    """On unclustered vectors, IVF with all 16 lists probed is exact and with one list it misses most neighbours."""
    rng = np.random.default_rng(1)
    database, queries = rng.standard_normal((N, 32), dtype=np.float32), rng.standard_normal((50, 32), dtype=np.float32)
    exact = np.argsort(((queries[:, None] - database[None]) ** 2).sum(-1), axis=1)[:, :10]
    rows = [StoreRow(path=str(i)) for i in range(N)]
    recalls = {}
    for nprobe in (1, 16):
        store = MilvusStore.create(tmp_path / str(nprobe), str(tmp_path / "fgia.db"), {}, {"coarse": 32},
                                   indexes={"coarse": IndexConfig(factory="IVF16,Flat", search_params=f"nprobe={nprobe}")})
        store.append(rows, {"coarse": database})
        ids = store.search("coarse", queries, 10)[1]
        recalls[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recalls[16] == 1.0 and recalls[1] < 0.8, recalls


def test_reopened_store_serves_rows_arrays_and_fetch(tmp_path, data):
    rows, arrays, _ = data
    _milvus(tmp_path, rows, arrays, "Flat")
    store = open_store(tmp_path / "index", expected_fingerprint={"model": "m1"}, verify=True)
    assert isinstance(store, MilvusStore) and len(store) == N
    assert store.rows() == rows
    assert np.array_equal(store.routes(), [r.route for r in rows])
    assert store.attributes == {"classes": ["a", "b"]}
    for name, values in arrays.items():
        np.testing.assert_array_equal(store.array(name), values)
    ids = np.array([[5, -1, 1999], [0, 0, -1]])
    fetched = MilvusStore.open(tmp_path / "index").fetch("fine/birds", ids)  # from Milvus, not a cached array
    np.testing.assert_array_equal(fetched, np.where((ids >= 0)[..., None], arrays["fine/birds"][ids], 0))
    queries = arrays["fine/birds"][[7, 8]]
    expected = ((arrays["fine/birds"][ids] - queries[:, None]) ** 2).sum(-1)
    for store_now in (MilvusStore.open(tmp_path / "index"), store):  # from Milvus, then from the array read above
        np.testing.assert_allclose(store_now.distances("fine/birds", queries, ids),
                                   np.where(ids >= 0, expected, np.inf), rtol=1e-5)
    with pytest.raises(IndexMismatchError, match="model"):
        open_store(tmp_path / "index", expected_fingerprint={"model": "m2"})


def test_a_killed_append_is_ignored_then_cleaned(tmp_path, data):
    rows, arrays, queries = data
    store = _milvus(tmp_path, rows[:100], {k: v[:100] for k, v in arrays.items()}, "Flat")
    # What an append killed before its commit leaves: rows above the committed count, in one collection.
    store.client.insert(store.descriptor["collections"]["coarse"],
                        [{"id": 100 + i, "vector": queries[i], "path": "x", "category": "", "label": -1, "route": 0,
                          "digest": ""} for i in range(5)])
    store.client.flush(store.descriptor["collections"]["coarse"])
    reopened = MilvusStore.open(tmp_path / "index", verify=True)
    assert reopened.search("coarse", queries[:5], 3)[1].max() < 100
    reopened.append(rows[100:110], {k: v[100:110] for k, v in arrays.items()})
    assert len(reopened.rows()) == 110 and reopened.rows()[100] == rows[100]
    np.testing.assert_array_equal(MilvusStore.open(tmp_path / "index").array("coarse"), arrays["coarse"][:110])


def test_damage_and_bad_configs_are_refused(tmp_path, data):
    rows, arrays, _ = data
    uri = str(tmp_path / "fgia.db")
    with pytest.raises(ValueError, match="Milvus Lite builds"):
        MilvusStore.create(tmp_path / "pq", uri, {}, DIMS, indexes={"coarse": "IVF16,PQ8"})
    with pytest.raises(ValueError, match="no Milvus index"):
        MilvusStore.create(tmp_path / "lsh", uri, {}, DIMS, indexes={"coarse": "LSH"})
    with pytest.raises(ValueError, match="invalid search parameter"):
        milvus_index_params(IndexConfig(factory="HNSW32", search_params="nprobe=4"))
    assert milvus_index_params(IndexConfig(factory="IVF64,PQ8x4"))[:2] == ("IVF_PQ", {"nlist": 64, "m": 8, "nbits": 4})
    assert milvus_uri("milvus://milvus.local:19530") == "http://milvus.local:19530"
    with pytest.raises(ValueError, match="absolute path"):
        create_store(tmp_path / "rel", "milvus://relative.db", {}, DIMS)
    store = _milvus(tmp_path, rows[:50], {k: v[:50] for k, v in arrays.items()}, "Flat")
    store.client.drop_collection(store.descriptor["collections"]["fine/birds"])
    with pytest.raises(CorruptIndexError, match="is missing"):
        MilvusStore.open(tmp_path / "index")


def test_lite_reload_retries_an_index_file_still_being_written(tmp_path, data, monkeypatch):
    from pymilvus.exceptions import MilvusException

    rows, arrays, _ = data
    store = _milvus(tmp_path, rows, arrays, "IVF16,Flat")
    real_load, calls = store.client.load_collection, []

    def load_once_mid_write(collection, **kwargs):
        calls.append(collection)
        if len(calls) == 1:
            raise MilvusException(message="read error in data_000001.vector.ivf_flat.idx: 2173 != 17280")
        return real_load(collection, **kwargs)

    monkeypatch.setattr(store.client, "load_collection", load_once_mid_write)
    store.save_indexes()
    assert calls[0] == calls[1] and len(calls) == len(store.collections) + 1

    def load_fails(collection, **kwargs):
        raise MilvusException(message="collection not found")

    monkeypatch.setattr(store.client, "load_collection", load_fails)
    with pytest.raises(MilvusException, match="not found"):
        store.save_indexes()
