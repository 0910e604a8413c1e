"""Index building and the RetrievalEngine API on a tiny trained system."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from fgia.data import load_image
from fgia.index import IndexMismatchError
from fgia.retrieval.engine import (
    PIPELINES,
    STAGES,
    RetrievalEngine,
    build_index,
)
from fgia.retrieval.system import CLASSIFIER_FILE, CoarseClassifier


@pytest.fixture(scope="module")
def engine(built) -> RetrievalEngine:
    return RetrievalEngine.load(built.index_dir, device="cpu")


def test_index_holds_every_stage_for_every_database_image(built, engine):
    n = len(built.split.database)
    stats = engine.stats()
    assert stats["images"] == len(engine) == n
    assert stats["labelled"] == sum(s.label >= 0 for s in built.split.database.samples)
    names = {"coarse", "unified", "box", "fine/unified", "codes/64"} | {f"fine/{c}" for c in stats["categories"]}
    assert set(stats["dims"]) == names  # category models: a fine feature under each of them too
    assert stats["dims"]["coarse"] == 4 and stats["dims"]["fine/unified"] == 16  # [8-d image, 8-d region]
    assert set(engine.system.models) == {"unified", "offtheshelf", *stats["categories"]}
    for name in names - {"coarse"}:
        assert len(engine.store.array(name)) == n
    assert set(engine.routes) <= set(range(len(stats["categories"]))) and len(engine.routes) == n  # in the metadata
    assert engine.image_path(3) == built.split.database.samples[3].path.resolve()
    with pytest.raises(IndexError, match="outside the index"):
        engine.image_path(n)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_database_image_finds_itself_first(built, engine, pipeline):
    sample = next(s for s in built.split.database.samples if s.label >= 0)
    own_id = built.split.database.samples.index(sample)
    [result] = engine.search([load_image(sample.path)], top_k=5, pipeline=pipeline)
    assert result.ids[0] == own_id
    assert result.distances[0] == pytest.approx(0.0, abs=1e-3)
    assert len(result.ids) == 5
    # c2f ranks candidates routed like the query first, each group by distance; single-stage by distance only.
    other = engine.routes[result.ids] != engine.system.categories.index(result.category)
    if not pipeline.startswith("c2f"):
        other[:] = False
    assert other.tolist() == sorted(other.tolist())
    for group in (~other, other):
        d = np.array(result.distances)[group]
        assert (np.diff(d) >= 0).all()
    assert result.paths[0] == str(sample.path.resolve())
    assert result.labels[0] == built.split.database.classes[sample.label]


def test_search_result_fields_and_timings(built, engine):
    sample = built.split.queries.samples[0]
    image = load_image(sample.path)
    [result] = engine.search([image], top_k=3, query_expansion=True)
    assert result.category in engine.system.categories
    x1, y1, x2, y2 = result.region_box
    assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
    assert result.confidence_map.ndim == 2
    assert set(result.timings_ms) == set(STAGES)
    assert all(v > 0 for v in result.timings_ms.values())  # c2f runs every stage
    assert result.timings_ms["total"] >= sum(v for k, v in result.timings_ms.items() if k != "total")
    assert set(result.to_dict()) >= {"ids", "distances", "paths", "labels", "category", "region_box"}


def test_batched_ranking_matches_single_query_search(built, engine):
    queries = built.split.queries.samples[:3]
    qf = engine.query_features(queries)
    ranking = engine.rank(qf, "c2f", query_expansion=True)
    assert ranking.ids.shape == (3, engine.top_k)
    for i, s in enumerate(queries):
        [result] = engine.search([load_image(s.path)], top_k=engine.top_k, query_expansion=True)
        assert result.ids == ranking.row(i)[0].tolist()
        np.testing.assert_allclose(result.distances, ranking.row(i)[1], atol=1e-4)
    batch = engine.search([load_image(s.path) for s in queries], top_k=engine.top_k, query_expansion=True)
    assert [r.ids for r in batch] == [ranking.row(i)[0].tolist() for i in range(3)]


def test_full_rankings_cover_the_database_candidates_first(built, engine):
    qf = engine.query_features(built.split.queries.samples[:2])
    top = engine.rank(qf, "c2f")
    full = engine.rank(qf, "c2f", full=True)
    assert full.ids.shape == (2, len(engine))
    for i in range(2):
        assert sorted(full.ids[i].tolist()) == list(range(len(engine)))
        assert full.ids[i, : engine.top_k].tolist() == top.ids[i].tolist()
        rest = full.ids[i, engine.top_k :]  # after the candidates: the rest of the database in coarse order
        coarse = np.linalg.norm(engine.store.array("coarse")[rest] - qf.coarse[i], axis=1)
        assert (np.diff(coarse) >= -1e-6).all()


def test_query_expansion_searches_again_from_the_averaged_query(built, engine):
    qf = engine.query_features(built.split.queries.samples[:1])
    plain = engine.rank(qf, "unified", top_k=len(engine))
    top = plain.ids[0, : engine.system.config.qe_top]
    expanded = (qf.unified[0] + engine.store.array("unified")[top].sum(0)) / (1 + len(top))
    by_hand = np.argsort(np.linalg.norm(engine.store.array("unified") - expanded, axis=1), kind="stable")
    np.testing.assert_array_equal(engine.rank(qf, "unified", query_expansion=True, top_k=len(engine)).ids[0],
                                  by_hand)


def test_bad_requests_are_refused(built, engine):
    image = load_image(built.split.queries.samples[0].path)
    with pytest.raises(ValueError, match="unknown pipeline 'fastest'"):
        engine.search([image], pipeline="fastest")
    with pytest.raises(ValueError, match="top_k"):
        engine.search([image], top_k=0)
    with pytest.raises(FileExistsError):
        build_index(built.system_dir, built.split.database, built.index_dir, device="cpu")
    with pytest.raises(FileNotFoundError, match="not a retrieval index"):
        RetrievalEngine.load(built.system_dir)


def test_index_of_another_system_is_refused(built, tmp_path):
    other = tmp_path / "system"
    shutil.copytree(built.system_dir, other)
    clf = CoarseClassifier.load(other / CLASSIFIER_FILE)
    clf.model.intercept_ = clf.model.intercept_ + 1.0  # as if retrained: a different classifier
    clf.save(other / CLASSIFIER_FILE)
    with pytest.raises(IndexMismatchError, match="system"):
        RetrievalEngine.load(built.index_dir, device="cpu", system_dir=other)
    with pytest.raises(IndexMismatchError):
        build_index(other, built.split.database, built.index_dir, append=True, device="cpu")


def test_append_equals_building_at_once(built, engine, tmp_path):
    db = built.split.database
    first, rest = db.filter(lambda s: s in db.samples[:10]), db.filter(lambda s: s in db.samples[10:])
    build_index(built.system_dir, first, tmp_path / "idx", device="cpu")
    result = build_index(built.system_dir, rest, tmp_path / "idx", append=True, device="cpu")
    assert (result.added, result.total) == (len(rest), len(db))
    appended = RetrievalEngine.load(tmp_path / "idx", device="cpu")
    np.testing.assert_allclose(appended.store.array("fine/unified"), engine.store.array("fine/unified"), atol=1e-5)
    assert appended.classes and set(appended.classes) == set(engine.classes)
    image = load_image(built.split.queries.samples[0].path)
    assert appended.search([image])[0].paths == engine.search([image])[0].paths


def test_an_engine_from_arrays_ranks_like_the_index_it_copies(built, engine):
    arrays = {name: np.array(engine.store.array(name)) for name in engine.store.dims}
    rows = [replace(row, path=str(engine.image_path(i))) for i, row in enumerate(engine.rows)]
    copy = RetrievalEngine.from_arrays(engine.system, rows, arrays, classes=engine.classes, device="cpu")
    image = load_image(built.split.queries.samples[0].path)
    [ours], [theirs] = copy.search([image], top_k=5), engine.search([image], top_k=5)
    assert ours.ids == theirs.ids and ours.paths == theirs.paths  # in memory, paths are as given


def test_many_candidates_rank_through_one_product_exactly_as_gathered(built, engine):
    queries = built.split.queries.samples[:3]
    qf = engine.query_features(queries)
    together = engine.rank(qf, "c2f", top_k=len(engine))  # 3 x N candidates: the whole-array product
    for i in range(3):
        alone = engine.rank(engine.query_features(queries[i : i + 1]), "c2f", top_k=len(engine))  # N: gathered
        np.testing.assert_allclose(together.distances[i], alone.distances[0], atol=1e-4)
        assert np.array_equal(together.ids[i][np.isfinite(together.distances[i])],
                              alone.ids[0][np.isfinite(alone.distances[0])])


def test_search_params_are_saved_with_the_coarse_index(built, engine, tmp_path):
    build_index(built.system_dir, built.split.database, tmp_path / "ivf", device="cpu", factory="IVF2,Flat",
                search_params="nprobe=2")
    ivf = RetrievalEngine.load(tmp_path / "ivf", device="cpu")
    assert ivf.store.index("coarse").config.search_params == "nprobe=2"
    qf = engine.query_features(built.split.queries.samples[:2])
    # Probing both lists is exact: the same candidates, so the same ranking as the Flat index.
    np.testing.assert_array_equal(ivf.rank(qf, "c2f").ids, engine.rank(qf, "c2f").ids)
    with pytest.raises(ValueError, match="bogus"):
        build_index(built.system_dir, built.split.database, tmp_path / "bad", device="cpu", factory="IVF2,Flat",
                    search_params="bogus=3")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
