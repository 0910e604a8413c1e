"""Array-level search on hand-made vectors whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from fgia.retrieval.search import average_query_expansion, knn, rerank


def test_knn_orders_by_euclidean_distance_and_pads():
    db = np.array([[0, 0], [3, 4], [1, 0], [0, 2]], dtype=np.float32)
    r = knn(np.array([[0, 0]], dtype=np.float32), db, k=6)
    assert r.ids[0].tolist() == [0, 2, 3, 1, -1, -1]
    np.testing.assert_allclose(r.distances[0, :4], [0, 1, 2, 5], atol=1e-6)
    assert np.isinf(r.distances[0, 4:]).all()
    ids, dist = r.row(0)
    assert ids.tolist() == [0, 2, 3, 1] and len(dist) == 4


def test_knn_rejects_bad_input():
    db = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="dimension 2, expected 4"):
        knn(np.zeros((1, 2)), db, 1)
    with pytest.raises(ValueError, match="NaN"):
        knn(np.full((1, 4), np.nan), db, 1)
    with pytest.raises(ValueError, match="empty database"):
        knn(np.zeros((1, 4)), np.zeros((0, 4)), 1)


def test_rerank_only_reorders_candidates():
    fine = np.array([[0.0], [10.0], [1.0], [2.0], [0.5]], dtype=np.float32)
    # Row 4 is the fine-level nearest but is not a candidate, so it must not appear.
    cand = np.array([[3, 1, 2, -1]])
    r = rerank(np.array([[0.0]]), fine[np.maximum(cand, 0)], cand)
    assert r.ids[0].tolist() == [2, 3, 1, -1]
    np.testing.assert_allclose(r.distances[0, :3], [1, 2, 10])
    cand = np.array([[3, 1, 2]])
    assert rerank(np.array([[0.0]]), fine[cand], cand, k=2).ids[0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="candidate vectors must be"):
        rerank(np.array([[0.0]]), fine, cand)


def test_rerank_uses_each_querys_own_candidate_vectors():
    # The same candidates seen through two models (e.g. two routed category models) rank differently.
    model_a = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    model_b = model_a[::-1].copy()
    queries = np.array([[0.0], [0.0]], dtype=np.float32)
    cand = np.array([[0, 1, 2], [0, 1, 2]])
    r = rerank(queries, np.stack([model_a[cand[0]], model_b[cand[1]]]), cand)
    assert r.ids.tolist() == [[0, 1, 2], [2, 1, 0]]


def test_query_expansion_averages_query_and_top_hits():
    db = np.array([[1.0, 0], [3.0, 0], [100.0, 0]], dtype=np.float32)
    q = np.array([[2.0, 6.0], [0.0, 3.0]], dtype=np.float32)
    hits = np.array([[1, 0], [2, -1]])  # -1: fewer hits than asked
    expanded = average_query_expansion(q, db[np.maximum(hits, 0)], hits >= 0)
    np.testing.assert_allclose(expanded, [[(2 + 3 + 1) / 3, 2.0], [50.0, 1.5]])


def test_query_expansion_pulls_in_a_match_near_the_top_hits():
    # Query sits between two clusters, slightly nearer the wrong lone point (row 3); its true cluster
    # (rows 0-2) dominates its top hits, so the expanded query moves to that cluster.
    db = np.array([[0.0], [0.2], [0.4], [1.45], [3.0]], dtype=np.float32)
    q = np.array([[1.0]], dtype=np.float32)
    plain = knn(q, db, 5)
    expanded = knn(average_query_expansion(q, db[plain.ids[:, :3]]), db, 5)
    assert plain.ids[0, 0] == 3
    assert expanded.ids[0, :2].tolist() == [2, 1]


def test_rerank_demotes_marked_candidates_after_the_others():
    fine = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    cand = np.array([[0, 1, 2, 3]])
    demote = np.array([[True, False, True, False]])  # e.g. database images of another meta-category
    r = rerank(np.array([[0.0]]), fine[cand], cand, demote=demote)
    assert r.ids[0].tolist() == [1, 3, 0, 2]
    np.testing.assert_allclose(r.distances[0], [1, 3, 0, 2])
    with pytest.raises(ValueError, match="demote must have"):
        rerank(np.array([[0.0]]), fine[cand], cand, demote=demote[:, :2])
