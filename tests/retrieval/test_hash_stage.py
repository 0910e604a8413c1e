"""Binary codes in the index: the hashing model trained with the system, Hamming search and the hash stage."""

from __future__ import annotations

import numpy as np
import pytest

from fgia.index import IndexMismatchError
from fgia.retrieval.engine import RetrievalEngine, binary_codes, build_index


@pytest.fixture(scope="module")
def engine(built) -> RetrievalEngine:
    return RetrievalEngine.load(built.index_dir, device="cpu")


def _hamming(engine, qf):
    codes = binary_codes(engine.system, qf.codes, 64)
    return (codes[:, None, :] != engine.store.array("codes/64")[None]).sum(2)


def test_the_system_trains_a_hashing_model_and_the_index_stores_its_codes(built, engine):
    assert (built.system_dir / "hash" / "model.yaml").is_file()
    assert "hash/model.yaml" in engine.system.files  # fingerprinted: a retrained hashing model changes the system
    assert set(engine.system.hash_model.code_slices) == {16, 64} and engine.stats()["codes"] == 64
    stored = engine.store.array("codes/64")
    assert stored.shape == (len(engine), 64) and set(np.unique(stored)) == {-1.0, 1.0}
    index = engine.store.index("codes/64")
    assert index.factory == "BFlat" and len(index) == len(engine)
    # the stored codes are the database images' codes, as a query would compute them
    qf = engine.query_features(built.split.database.samples[:3])
    np.testing.assert_array_equal(binary_codes(engine.system, qf.codes, 64), stored[:3])


def test_hash_pipeline_ranks_by_hamming_distance(built, engine):
    qf = engine.query_features(built.split.queries.samples[:3])
    ranking = engine.rank(qf, "hash", top_k=len(engine))
    hamming = _hamming(engine, qf)
    for i in range(3):
        assert sorted(ranking.ids[i].tolist()) == list(range(len(engine)))
        np.testing.assert_array_equal(ranking.distances[i], hamming[i, ranking.ids[i]])
        assert (np.diff(ranking.distances[i]) >= 0).all()


def test_c2f_hash_reranks_the_hamming_top_k(built, engine):
    qf = engine.query_features(built.split.queries.samples[:2])
    full = engine.rank(qf, "c2f-hash", full=True)
    top = engine.rank(qf, "c2f-hash")
    hamming = _hamming(engine, qf)
    k = engine.top_k
    for i in range(2):
        assert full.ids[i, :k].tolist() == top.ids[i].tolist()
        candidates, rest = full.ids[i, :k], full.ids[i, k:]
        # the candidates are a Hamming top-K, and the rest follows in Hamming order
        assert hamming[i, candidates].max() <= hamming[i, rest].min()
        assert (np.diff(full.distances[i, k:]) >= 0).all()
        np.testing.assert_array_equal(full.distances[i, k:], hamming[i, rest])
    expanded = engine.rank(qf, "c2f-hash", query_expansion=True)
    assert expanded.ids.shape == top.ids.shape


def test_codes_options_are_checked(built, tmp_path):
    with pytest.raises(ValueError, match="no 32-bit hashing model"):
        build_index(built.system_dir, built.split.database, tmp_path / "a", device="cpu", codes=32)
    with pytest.raises(IndexMismatchError, match="holds 64"):
        build_index(built.system_dir, built.split.database, built.index_dir, append=True, device="cpu", codes=16)
    first = built.split.database.filter(lambda s: s in built.split.database.samples[:12])
    build_index(built.system_dir, first, tmp_path / "plain", device="cpu")
    plain = RetrievalEngine.load(tmp_path / "plain", device="cpu")
    qf = plain.query_features(built.split.queries.samples[:1])
    with pytest.raises(ValueError, match="needs an index built with binary codes"):
        plain.rank(qf, "hash")


def test_binary_ivf_code_index(built, tmp_path):
    build_index(built.system_dir, built.split.database, tmp_path / "ivf", device="cpu", codes=16,
                hash_factory="BIVF2")
    engine = RetrievalEngine.load(tmp_path / "ivf", device="cpu")
    index = engine.store.index("codes/16")
    assert index.factory == "BIVF2" and len(index) == len(engine)
    index.set_search_params("nprobe=2")  # both lists: exact
    qf = engine.query_features(built.split.queries.samples[:2])
    ranking = engine.rank(qf, "hash", top_k=len(engine))
    codes = binary_codes(engine.system, qf.codes, 16)
    hamming = (codes[:, None, :] != engine.store.array("codes/16")[None]).sum(2)
    np.testing.assert_array_equal(np.sort(ranking.distances, axis=1), np.sort(hamming, axis=1))
