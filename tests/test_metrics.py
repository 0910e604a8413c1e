"""Metrics against hand-computed rankings, scikit-learn, and batched-vs-unbatched evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    top_k_accuracy_score,
)

from fgia.index.torch_flat import query_batches
from fgia.metrics import (
    average_precision,
    evaluate_hamming,
    evaluate_rankings,
    evaluate_retrieval,
    mean_average_precision,
    mean_per_class_accuracy,
    ranking_metrics,
    topk_accuracy,
)


def test_average_precision_hand_computed():
    assert average_precision([1, 0, 1, 0, 0]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    # A third relevant item never retrieved (truncated list) counts as missed.
    assert average_precision([1, 0, 1, 0, 0], n_relevant=3) == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert average_precision([0, 0, 1, 1]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert np.isnan(average_precision([0, 0, 0]))
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision([1, 1, 0], n_relevant=1)


def test_ranking_metrics_hand_computed():
    rel = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=bool)
    n_rel = np.array([2, 2, 0])
    m = ranking_metrics(rel, n_rel, ks=(1, 2, 4))
    ap = [(1 + 2 / 3) / 2, (1 / 3 + 2 / 4) / 2]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    # mAP@R with R=2: query 0 has one hit in its top 2 (precision 1), query 1 none.
    assert m["mAP@R"] == pytest.approx((0.5 + 0.0) / 2)
    assert (m["R@1"], m["R@2"], m["R@4"]) == pytest.approx((0.5, 0.5, 1.0))
    assert (m["P@1"], m["P@2"], m["P@4"]) == pytest.approx((0.5, 0.25, 0.5))
    assert (m["n_queries"], m["n_without_relevant"]) == (2, 1)

    zero = ranking_metrics(rel, n_rel, ks=(1, 2, 4), empty_queries="zero")
    assert zero["mAP"] == pytest.approx(sum(ap) / 3)
    assert zero["R@4"] == pytest.approx(2 / 3)
    assert (zero["n_queries"], zero["n_without_relevant"]) == (3, 1)
    assert mean_average_precision(rel, n_rel) == pytest.approx(m["mAP"])


def test_ranking_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="no query has a relevant item"):
        ranking_metrics(np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="empty_queries"):
        ranking_metrics([[1, 0]], empty_queries="skip")
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics([[1, 0]], ks=(0,))


def test_map_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        if not y.any():
            y[rng.integers(n)] = True
        scores = rng.random(n)
        ranked = y[np.argsort(-scores)]
        assert average_precision(ranked) == pytest.approx(average_precision_score(y, scores))


def test_evaluate_rankings_hand_computed_with_leave_one_out_and_distractors():
    db_labels = np.array([0, 0, 1, -1, 1, 0])
    # Query 0 is database item 0 (label 0); its own id is excluded. Query 1 (label 1) has a truncated list.
    ranked = np.array([[0, 3, 1, 5, 2, 4], [3, 4, -1, -1, -1, -1]])
    m = evaluate_rankings(ranked, [0, 1], db_labels, ks=(1, 2), exclude_ids=[0, -1])
    ap0 = (1 / 2 + 2 / 3) / 2  # [3, 1, 5, 2, 4] -> relevance [0, 1, 1, 0, 0], 2 relevant left
    ap1 = (1 / 2) / 2  # [3, 4] -> [0, 1]; item 2 (label 1) never retrieved
    assert m["mAP"] == pytest.approx((ap0 + ap1) / 2)
    assert m["R@1"] == 0.0 and m["R@2"] == 1.0
    with pytest.raises(ValueError, match="every query needs a label"):
        evaluate_rankings(ranked, [0, -1], db_labels)
    with pytest.raises(ValueError, match="must index the database"):
        evaluate_rankings([[9]], [0], db_labels)


def test_evaluate_retrieval_hand_computed():
    db = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    db_labels = np.array([0, 1, 0, -1, 1])
    m = evaluate_retrieval(np.array([[0.1]]), np.array([0]), db, db_labels, ks=(1, 2))
    assert m["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["P@2"] == pytest.approx(0.5)


def _clustered(rng, n, dim, n_classes):
    labels = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, dim)) * 2
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_evaluate_retrieval_batched_equals_unbatched_and_sklearn():
    rng = np.random.default_rng(1)
    db, db_labels = _clustered(rng, 300, 8, 6)
    db_labels[:40] = -1  # distractors
    q, q_labels = _clustered(rng, 25, 8, 6)
    one = evaluate_retrieval(q, q_labels, db, db_labels, batch_size=1)
    full = evaluate_retrieval(q, q_labels, db, db_labels, batch_size=1000)
    assert one == pytest.approx(full)
    dists = ((q[:, None, :] - db[None]) ** 2).sum(-1)
    expected = np.mean([average_precision_score(db_labels == lab, -d) for lab, d in zip(q_labels, dists)])
    assert full["mAP"] == pytest.approx(expected, rel=1e-5)
    # Same numbers from precomputed full rankings.
    assert evaluate_rankings(np.argsort(dists, axis=1), q_labels, db_labels) == pytest.approx(full)


def test_evaluate_retrieval_leave_one_out_matches_rankings():
    rng = np.random.default_rng(2)
    x, labels = _clustered(rng, 60, 4, 5)
    loo = evaluate_retrieval(x, labels, x, labels, ks=(1, 4), exclude_ids=np.arange(60), batch_size=7)
    dists = ((x[:, None] - x[None]) ** 2).sum(-1)
    ranked = np.argsort(dists, axis=1, kind="stable")
    assert evaluate_rankings(ranked, labels, labels, ks=(1, 4), exclude_ids=np.arange(60)) == pytest.approx(loo)
    # Without the exclusion every query finds itself first.
    assert evaluate_retrieval(x, labels, x, labels, ks=(1,))["R@1"] == 1.0
    assert loo["R@1"] < 1.0


def test_query_batches_bound_the_distance_block():
    slices = list(query_batches(1000, 300_000, batch_size=256, max_block=2**23))
    assert max(s.stop - s.start for s in slices) * 300_000 <= 2**23
    assert sum(s.stop - s.start for s in slices) == 1000


def test_topk_accuracy_hand_computed_and_vs_sklearn():
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(logits, [1, 1, 0], ks=(1, 2, 3))
    assert acc == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top3": 1.0})
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(50, 10)), rng.integers(0, 10, 50)
    for k in (1, 5):
        assert topk_accuracy(logits, labels)[f"top{k}"] == pytest.approx(
            top_k_accuracy_score(labels, logits, k=k, labels=np.arange(10))
        )
    with pytest.raises(ValueError, match="exceeds the number of classes"):
        topk_accuracy(logits, labels, ks=(11,))


def test_mean_per_class_accuracy():
    # class 0: 2/2, class 1: 1/3, class 2: 0/1
    pred, labels = np.array([0, 0, 1, 2, 0, 1]), np.array([0, 0, 1, 1, 1, 2])
    assert mean_per_class_accuracy(pred, labels) == pytest.approx((1 + 1 / 3 + 0) / 3)
    rng = np.random.default_rng(4)
    pred, labels = rng.integers(0, 7, 200), rng.integers(0, 7, 200)
    assert mean_per_class_accuracy(pred, labels) == pytest.approx(balanced_accuracy_score(labels, pred))
    with pytest.raises(ValueError, match="entries"):
        mean_per_class_accuracy([0, 1], [0])


def test_hamming_ranking_map_by_hand():
    db = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, 1, 1], [1, 1, -1, -1]], dtype=np.float32)
    db_labels = np.array([0, 1, 0, 1])
    queries = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]], dtype=np.float32)
    # query 0: Hamming 0, 1, 2, 2 -> d0, d1, d2, d3 (tie by id); relevant d0 @1, d2 @3: AP = (1 + 2/3) / 2
    # query 1: Hamming 4, 3, 2, 2 -> d2, d3, d1, d0; relevant d3 @2, d1 @3: AP = (1/2 + 2/3) / 2
    scores = evaluate_hamming(queries, [0, 1], db, db_labels, ks=(1,))
    assert scores["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert scores["R@1"] == pytest.approx(0.5)
    # {0, 1} bits and real-valued relaxed codes rank the same as their signs
    again = evaluate_hamming((queries > 0).astype(np.uint8), [0, 1], db * 0.3, db_labels, ks=(1,))
    assert again["mAP"] == pytest.approx(scores["mAP"])
