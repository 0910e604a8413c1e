"""An index kept in Milvus Lite answers like the FAISS one, reopens from its folder and appends without
duplicates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from fgia.cli import main  # noqa: E402
from fgia.index import MilvusStore  # noqa: E402
from fgia.index.milvus_store import DESCRIPTOR  # noqa: E402
from fgia.retrieval.engine import PIPELINES, RetrievalEngine, build_index  # noqa: E402


@pytest.fixture(scope="module")
def engines(built, tmp_path_factory) -> tuple[RetrievalEngine, RetrievalEngine]:
    out = tmp_path_factory.mktemp("milvus_index")
    result = build_index(built.system_dir, built.split.database, out / "index", device="cpu",
                         store=f"milvus://{out / 'fgia.db'}")
    assert (out / "index" / DESCRIPTOR).is_file() and not (out / "index" / "manifest.json").exists()
    assert result.total == len(RetrievalEngine.load(built.index_dir, device="cpu"))
    return RetrievalEngine.load(built.index_dir, device="cpu"), RetrievalEngine.load(out / "index", device="cpu")


@pytest.mark.parametrize("pipeline", [p for p in PIPELINES if "hash" not in p])  # binary codes: FAISS store only
def test_milvus_index_ranks_like_the_faiss_index(built, engines, pipeline):
    faiss_engine, milvus_engine = engines
    assert isinstance(milvus_engine.store, MilvusStore)
    assert milvus_engine.rows == faiss_engine.rows
    queries = faiss_engine.query_features(built.split.queries.samples)
    for qe in (False, True):
        expected = faiss_engine.rank(queries, pipeline, query_expansion=qe)
        ranking = milvus_engine.rank(queries, pipeline, query_expansion=qe)
        np.testing.assert_array_equal(ranking.ids, expected.ids)
        np.testing.assert_allclose(ranking.distances, expected.distances, rtol=1e-4, atol=1e-4)


def test_append_to_milvus_skips_duplicates(built, tmp_path):
    database = built.split.database
    half = replace(database, samples=database.samples[: len(database) // 2])
    index = tmp_path / "index"
    store = f"milvus://{tmp_path / 'fgia.db'}"
    first = build_index(built.system_dir, half, index, device="cpu", store=store)
    second = build_index(built.system_dir, database, index, append=True, device="cpu")
    assert (first.added, second.added, second.duplicates) == (len(half), len(database) - len(half), len(half))
    again = build_index(built.system_dir, database, index, append=True, device="cpu")
    assert (again.added, again.duplicates, again.total) == (0, len(database), len(database))
    appended = RetrievalEngine.load(index, device="cpu")
    reference = RetrievalEngine.load(built.index_dir, device="cpu")
    assert [r.path for r in appended.rows] == [r.path for r in reference.rows]
    np.testing.assert_allclose(appended.store.array("coarse"), reference.store.array("coarse"), atol=1e-6)


def test_cli_builds_verifies_and_searches_a_milvus_index(built, tiny_synth, tmp_path, monkeypatch, capsys):
    database = built.split.database
    manifest = tiny_synth
    index = tmp_path / "index"
    for args in (["index", str(built.system_dir), str(manifest), "--out", str(index), "--store",
                  f"milvus://{tmp_path / 'fgia.db'}", "--factory", "HNSW8"],
                 ["index", "verify", str(index), "--device", "cpu"],
                 ["search", str(index), str(database.samples[0].path), "--device", "cpu", "--json",
                  str(tmp_path / "hits.json")]):
        monkeypatch.setattr("sys.argv", ["fgia", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 0, capsys.readouterr()
    assert "every Milvus collection" in capsys.readouterr().out
    store = MilvusStore.open(index)
    assert store.index("coarse").factory == "HNSW8"
    first_store_collections = store.collections
    # --force replaces the index and drops the collections of the one it replaced.
    monkeypatch.setattr("sys.argv", ["fgia", "index", str(built.system_dir), str(manifest), "--out", str(index),
                                     "--store", f"milvus://{tmp_path / 'fgia.db'}", "--force"])
    with pytest.raises(SystemExit):
        main()
    assert not any(store.client.has_collection(c) for c in first_store_collections)
    assert len(RetrievalEngine.load(index, device="cpu")) > 0
