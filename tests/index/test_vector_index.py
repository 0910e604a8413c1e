"""VectorIndex: every kind against exact search, save/load round trips, atomic saves, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fgia.index import IndexMismatchError, VectorIndex, create_index
from fgia.index.vector_index import sq_distances_by_id


def _clustered(n, dim, seed=0, n_clusters=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 3
    return (centres[rng.integers(0, n_clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _exact(db, q, k):
    d = ((q[:, None] - db[None]) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, 1), ids


@pytest.fixture(scope="module")
def data():
    return _clustered(2000, 32), _clustered(40, 32, seed=1)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_flat_is_exact_and_pads_missing(data, backend):
    db, q = data
    index = create_index(32, "Flat", device="cpu", backend=backend)
    index.add(db[:1000])
    index.add(db[1000:])
    d, ids = index.search(q, 10, batch_size=7)
    exp_d, exp_ids = _exact(db, q, 10)
    assert ids.dtype == np.int64 and d.dtype == np.float32 and len(index) == 2000
    np.testing.assert_array_equal(ids, exp_ids)
    np.testing.assert_allclose(d, exp_d, rtol=1e-4, atol=1e-3)
    small = create_index(32, "Flat", device="cpu", backend=backend)
    small.add(db[:3])
    d, ids = small.search(q[:2], 5)
    assert (ids[:, 3:] == -1).all() and np.isinf(d[:, 3:]).all() and (ids[:, :3] >= 0).all()
    assert (create_index(32, "Flat", device="cpu", backend=backend).search(q[:2], 4)[1] == -1).all()


def test_torch_and_faiss_flat_agree(data):
    db, q = data
    results = []
    for backend in ("faiss", "torch"):
        index = create_index(32, device="cpu", backend=backend)
        index.add(db)
        results.append(index.search(q, 50))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-3)


def test_torch_fp16_matches_fp32_and_refuses_overflow(data):
    db, q = data
    scale = 1 / np.sqrt((db**2).sum(1).max())  # unit-bounded norms: fp16 distances stay finite
    fp32, fp16 = (create_index(32, device="cpu", backend="torch", fp16=half) for half in (False, True))
    for index in (fp32, fp16):
        index.add(db * scale)
    (d32, i32), (d16, i16) = fp32.search(q * scale, 10), fp16.search(q * scale, 10)
    assert np.mean(i32[:, 0] == i16[:, 0]) >= 0.9
    np.testing.assert_allclose(d16, d32, atol=2e-2)
    with pytest.raises(ValueError, match="overflow fp16"):
        fp16.add(db * 100)


@pytest.mark.parametrize(
    "factory, params",
    [("HNSW16", "efSearch=64"), ("IVF16,PQ8,RFlat", "nprobe=16,k_factor_rf=8"), ("IVF16,Flat", "nprobe=4")],
)
def test_ann_recall_against_exact(data, factory, params):
    db, q = data
    index = create_index(32, factory, search_params=params)
    assert index.is_trained == factory.startswith("HNSW")
    index.train(db)
    index.add(db)
    _, ids = index.search(q, 10)
    _, exact = _exact(db, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9, f"{factory} recall@10 {recall:.3f}"


def test_search_params_change_results(data):
    db, q = data
    index = create_index(32, "IVF16,PQ4", search_params="nprobe=1")
    index.train(db)
    index.add(db)
    _, few = index.search(q, 20)
    index.set_search_params("nprobe=16")
    _, many = index.search(q, 20)
    _, exact = _exact(db, q, 20)
    hits = [np.mean([len(set(a) & set(b)) for a, b in zip(ids, exact)]) for ids in (few, many)]
    assert hits[1] > hits[0]
    with pytest.raises(ValueError, match="invalid search parameters"):
        index.set_search_params("nosuchparam=3")


@pytest.mark.parametrize(
    "factory, kwargs",
    [("Flat", {}), ("Flat", {"backend": "torch"}), ("HNSW8", {}), ("IVF8,PQ4,RFlat", {"search_params": "nprobe=3"}),
     ("BFlat", {})],
)
def test_save_load_round_trip(tmp_path, data, factory, kwargs):
    db, q = data
    index = create_index(32, factory, device="cpu", **kwargs)
    index.train(db)
    index.add(db)
    index.save(tmp_path / "a.fidx")
    loaded = VectorIndex.load(tmp_path / "a.fidx", expected_dim=32)
    assert type(loaded) is type(index) and len(loaded) == len(index) and loaded.config == index.config
    for got, want in zip(loaded.search(q, 8), index.search(q, 8)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(IndexMismatchError, match="64-d ones were expected"):
        VectorIndex.load(tmp_path / "a.fidx", expected_dim=64)


def test_interrupted_save_keeps_previous_file(tmp_path, data, monkeypatch):
    db, q = data
    index = create_index(32)
    index.add(db[:100])
    index.save(tmp_path / "a.fidx")
    index.add(db[100:])

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(type(index), "_write_payload", fail)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "a.fidx")
    assert len(VectorIndex.load(tmp_path / "a.fidx")) == 100
    assert [p.name for p in tmp_path.iterdir()] == ["a.fidx"]


def test_binary_index_codes_and_hamming():
    vectors = np.array([[1.0, -1, 1, 1, -1, -1, -1, 1] * 2, [-1.0] * 16, [1.0] * 16], dtype=np.float32)
    index = create_index(16, "BFlat")
    index.add(vectors)
    index.add(np.packbits(vectors > 0, axis=1))  # the same items as packed uint8 codes
    d, ids = index.search(np.ones((1, 16), np.float32), 6)
    # All-ones query: distance = number of non-positive coordinates.
    np.testing.assert_array_equal(d[0], [0, 0, 8, 8, 16, 16])
    assert set(ids[0, :2]) == {2, 5} and set(ids[0, 4:]) == {1, 4}


def test_binary_codes_of_any_length_are_padded_to_bytes():
    rng = np.random.default_rng(0)
    codes = np.where(rng.random((50, 12)) > 0.5, 1.0, -1.0).astype(np.float32)
    index = create_index(12, "BFlat")
    assert index.code_bytes == 2
    index.add(codes)
    index.add(np.packbits(codes[:2] > 0, axis=1))  # packed 12-bit codes: 2 bytes, the last 4 bits 0
    d, ids = index.search(codes[:5], 52)
    hamming = (codes[:5, None, :] != np.concatenate([codes, codes[:2]])[None]).sum(2)
    # the padding bits never count: every distance is the 12-bit Hamming distance
    np.testing.assert_array_equal(d, np.take_along_axis(hamming, ids, 1))
    with pytest.raises(ValueError, match=r"uint8 \(n, 2\) packed codes"):
        index.add(np.zeros((1, 12), np.uint8))


def test_binary_ivf_trains_and_its_nprobe_trades_recall(tmp_path):
    rng = np.random.default_rng(1)
    centres = np.where(rng.random((16, 64)) > 0.5, 1.0, -1.0)
    noise = np.where(rng.random((2000, 64)) < 0.1, -1.0, 1.0)
    codes = (centres[rng.integers(0, 16, 2000)] * noise).astype(np.float32)
    exact = create_index(64, "BFlat")
    exact.add(codes)
    index = create_index(64, "BIVF16", search_params="nprobe=1")
    with pytest.raises(ValueError, match="must be trained first"):
        index.add(codes)
    index.train(codes)
    index.add(codes)
    truth = exact.search(codes[:100], 10)[0]
    recall = {}
    for nprobe in (1, 16):
        index.set_search_params(f"nprobe={nprobe}")
        found = index.search(codes[:100], 10)[0]
        recall[nprobe] = np.mean(found[:, -1] <= truth[:, -1])  # as close as the exact 10th neighbour
    assert recall[16] == 1.0 and recall[1] < recall[16], recall
    index.save(tmp_path / "b.fidx")
    loaded = VectorIndex.load(tmp_path / "b.fidx")
    assert loaded.config.search_params == "nprobe=16"
    np.testing.assert_array_equal(loaded.search(codes[:5], 10)[1], index.search(codes[:5], 10)[1])


@pytest.mark.parametrize("factory", ["Flat", "BFlat", "HNSW8"])
def test_wrong_dims_are_refused(factory):
    index = create_index(16, factory)
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        index.add(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        index.search(np.zeros((3, 17), np.float32), 2)


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        create_index(16, "NotAnIndex")
    with pytest.raises(ValueError, match="exact search only"):
        create_index(16, "HNSW8", backend="torch")
    with pytest.raises(ValueError, match="NaN"):
        create_index(4).add(np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        create_index(4).search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(ValueError, match="must be trained first"):
        create_index(4, "IVF4,Flat").add(np.zeros((10, 4), np.float32))
    with pytest.raises(ValueError, match="training .* failed"):
        create_index(4, "IVF64,Flat").train(np.zeros((10, 4), np.float32))
    (tmp_path / "junk").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not an fgia index"):
        VectorIndex.load(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "missing")


def test_sq_distances_by_id_matches_hand_computed_and_pads():
    vectors = np.array([[0, 0, 0], [3, 4, 0], [1, 1, 1]], dtype=np.float32)
    queries = np.array([[0, 0, 0], [1, 0, 0]], dtype=np.float32)
    ids = np.array([[1, 2, -1], [0, 1, 1]])
    expected = [[25, 3, np.inf], [1, 4 + 16, 4 + 16]]
    np.testing.assert_allclose(sq_distances_by_id(vectors, queries, ids), expected)
    # Queries shorter than the rows compare with their leading columns (the image part of a fine feature).
    np.testing.assert_allclose(sq_distances_by_id(vectors, queries[:, :2], ids), [[25, 2, np.inf], [1, 20, 20]])
    with pytest.raises(ValueError, match="must agree"):
        sq_distances_by_id(vectors, queries, ids[:1])
