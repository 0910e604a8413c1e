"""Retrieval and classification metrics: pure functions over NumPy arrays, used by every stage (training,
recipe selection, evaluation), so they live beside `fgia.runtime` rather than in one stage's package.

Retrieval conventions (shared by every function here):

* A ranking is a row of booleans in rank order (True = relevant), or database ids (-1 = padding) that are turned
  into such a row by comparing labels. Unlabelled database items (label -1, distractors) are never relevant.
* `n_relevant` is the number of relevant items in the *whole database*. When a ranking is truncated (top-K
  only), relevant items missing from it count as never retrieved, so mAP is then a lower bound of the full value.
* mAP is the mean over queries of AP = (1/n_relevant) * sum over relevant ranks r of precision@r.
  mAP@R (Musgrave et al., "A Metric Learning Reality Check") only credits the first R = n_relevant ranks.
  R@K is 1 when a relevant item is within the top K (as the metric-learning literature reports Recall@K);
  P@K is the fraction of relevant items in the top K.
* A query with no relevant item in the database has no defined AP. By default (`empty_queries="exclude"`) it
  is left out of every mean and counted in `n_without_relevant`; with `empty_queries="zero"` it scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

EmptyQueries = Literal["exclude", "zero"]

# Ranking a batch against the whole database needs batch x N sort indices and cumulative counts;
# 2**23 elements keeps that under ~200 MB however large the database is.
_EVAL_MAX_BLOCK = 2**23


def _as_numpy(x: Any) -> np.ndarray:
    """Any array-like (a CPU torch tensor too: it exposes __array__) as a NumPy array."""
    return np.asarray(x)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")
    return ks


def _per_query(relevance: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-query AP, AP@R, R@K and P@K (NaN where the query has no relevant item)."""
    n_q, length = relevance.shape
    hits = np.cumsum(relevance, axis=1, dtype=np.int32)
    found = hits[:, -1] if length else np.zeros(n_q, dtype=np.int32)
    if np.any(found > n_relevant):
        bad = int(np.argmax(found > n_relevant))
        raise ValueError(
            f"query {bad}: the ranking holds {found[bad]} relevant items but n_relevant is {n_relevant[bad]}"
        )
    ranks = np.arange(1, length + 1, dtype=np.float32)
    precision_at_hits = np.where(relevance, hits / ranks, 0.0)
    within_r = np.arange(length)[None, :] < n_relevant[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(n_relevant > 0, n_relevant, np.nan)
        out = {
            "mAP": precision_at_hits.sum(1) / denom,
            "mAP@R": np.where(within_r, precision_at_hits, 0.0).sum(1) / denom,
        }
    defined = n_relevant > 0
    for k in ks:
        hits_at_k = hits[:, min(k, length) - 1] if length else np.zeros(n_q, dtype=np.int32)
        out[f"R@{k}"] = np.where(defined, hits_at_k > 0, np.nan)
        out[f"P@{k}"] = np.where(defined, hits_at_k / k, np.nan)
    return out


def _aggregate(per_query: dict[str, np.ndarray], n_relevant: np.ndarray, empty_queries: EmptyQueries) -> dict[str, Any]:
    if empty_queries not in ("exclude", "zero"):
        raise ValueError(f"empty_queries must be 'exclude' or 'zero', got {empty_queries!r}")
    defined = n_relevant > 0
    n_empty = int((~defined).sum())
    if empty_queries == "exclude" and not defined.any():
        raise ValueError("no query has a relevant item in the database: every metric is undefined")
    exclude = empty_queries == "exclude"
    result: dict[str, Any] = {
        name: float(values[defined].mean() if exclude else np.nan_to_num(values).mean())
        for name, values in per_query.items()
    }
    result["n_queries"] = int(defined.sum()) if exclude else len(n_relevant)
    result["n_without_relevant"] = n_empty
    return result


def _relevance_args(ranked_relevance: Any, n_relevant: Any) -> tuple[np.ndarray, np.ndarray]:
    rel = _as_numpy(ranked_relevance).astype(bool)
    if rel.ndim == 1:
        rel = rel[None, :]
    if rel.ndim != 2:
        raise ValueError(f"ranked_relevance must be 1-D (one query) or 2-D (queries x ranks), got shape {rel.shape}")
    if n_relevant is None:
        n_rel = rel.sum(1)
    else:
        n_rel = np.broadcast_to(_as_numpy(n_relevant).astype(np.int64), (rel.shape[0],))
    return rel, np.asarray(n_rel, dtype=np.int64)


def average_precision(ranked_relevance: Any, n_relevant: int | None = None) -> float:
    """AP of one ranking (booleans in rank order); `n_relevant` defaults to the relevant items in the ranking.

    Returns NaN when there is no relevant item at all (AP is undefined).
    """
    rel, n_rel = _relevance_args(ranked_relevance, n_relevant)
    if rel.shape[0] != 1:
        raise ValueError("average_precision takes one ranking; use ranking_metrics for several")
    return float(_per_query(rel, n_rel, (1,))["mAP"][0])


def ranking_metrics(
    ranked_relevance: Any,
    n_relevant: Any = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    empty_queries: EmptyQueries = "exclude",
) -> dict[str, Any]:
    """mAP, mAP@R, R@K and P@K of rankings given as booleans (queries x ranks).

    `n_relevant` (per query, or one int) is the number of relevant items in the whole database; it defaults to
    the count in each row (the rows are then assumed to be full rankings). Returns the metrics plus
    `n_queries` (queries averaged) and `n_without_relevant`.
    """
    rel, n_rel = _relevance_args(ranked_relevance, n_relevant)
    return _aggregate(_per_query(rel, n_rel, _check_ks(ks)), n_rel, empty_queries)


def mean_average_precision(
    ranked_relevance: Any, n_relevant: Any = None, empty_queries: EmptyQueries = "exclude"
) -> float:
    """mAP of rankings given as booleans (queries x ranks); see `ranking_metrics` for the conventions."""
    return ranking_metrics(ranked_relevance, n_relevant, ks=(1,), empty_queries=empty_queries)["mAP"]


def _labels(name: str, labels: Any, n: int | None = None) -> np.ndarray:
    arr = _as_numpy(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array (-1 = unlabelled), got {arr.dtype} {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries but there are {n} items")
    return arr.astype(np.int64)


def _count_relevant(query_labels: np.ndarray, db_labels: np.ndarray, exclude_ids: np.ndarray | None) -> np.ndarray:
    """Relevant database items per query: same label, labelled, and not the query's own excluded id."""
    if np.any(query_labels < 0):
        raise ValueError("every query needs a label (>= 0) to define which database items are relevant")
    classes, counts = np.unique(db_labels[db_labels >= 0], return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist()))
    n_rel = np.array([per_class.get(label, 0) for label in query_labels.tolist()], dtype=np.int64)
    if exclude_ids is not None:
        valid = exclude_ids >= 0
        n_rel = n_rel - (valid & (db_labels[np.where(valid, exclude_ids, 0)] == query_labels))
    return n_rel.astype(np.int64)


def _exclude_ids(exclude_ids: Any, n_queries: int, n_db: int) -> np.ndarray | None:
    if exclude_ids is None:
        return None
    ids = _labels("exclude_ids", exclude_ids, n_queries)
    if np.any(ids >= n_db):
        raise ValueError(f"exclude_ids must index the database (< {n_db}), got max {ids.max()}")
    return ids


def evaluate_rankings(
    ranked_ids: Any,
    query_labels: Any,
    db_labels: Any,
    ks: Sequence[int] = (1, 2, 4, 8),
    exclude_ids: Any = None,
    empty_queries: EmptyQueries = "exclude",
) -> dict[str, Any]:
    """Metrics of precomputed rankings: database ids per query (queries x ranks, -1 = padding), maybe top-K only.

    Relevance and the per-query number of relevant items come from the labels over the whole database, so a
    truncated list counts relevant items it misses as never retrieved. `exclude_ids[q]` (e.g. the query's own
    database id for leave-one-out, -1 for none) is removed from the ranking and from the relevant count.
    """
    ids = _as_numpy(ranked_ids).astype(np.int64)
    q_labels = _labels("query_labels", query_labels)
    d_labels = _labels("db_labels", db_labels)
    if ids.ndim != 2 or ids.shape[0] != len(q_labels):
        raise ValueError(f"ranked_ids must be (n_queries={len(q_labels)}, ranks), got shape {ids.shape}")
    if np.any(ids >= len(d_labels)):
        raise ValueError(f"ranked_ids must index the database (< {len(d_labels)}), got max {ids.max()}")
    excl = _exclude_ids(exclude_ids, len(q_labels), len(d_labels))
    if excl is not None:
        drop = (ids == excl[:, None]) & (excl[:, None] >= 0)
        # Stable sort moves the dropped entries to the end of their row, keeping the others in rank order.
        order = np.argsort(drop, axis=1, kind="stable")
        ids = np.where(np.take_along_axis(drop, order, 1), -1, np.take_along_axis(ids, order, 1))
    rel = (ids >= 0) & (d_labels[np.maximum(ids, 0)] == q_labels[:, None])
    n_rel = _count_relevant(q_labels, d_labels, excl)
    return _aggregate(_per_query(rel, n_rel, _check_ks(ks)), n_rel, empty_queries)


def evaluate_retrieval(
    query_features: Any,
    query_labels: Any,
    db_features: Any,
    db_labels: Any,
    ks: Sequence[int] = (1, 2, 4, 8),
    batch_size: int = 256,
    exclude_ids: Any = None,
    empty_queries: EmptyQueries = "exclude",
) -> dict[str, Any]:
    """Rank the whole database by Euclidean distance for every query and return `ranking_metrics`.

    Queries are ranked in batches (ties broken by database id), so memory stays bounded by
    batch x database, never queries x database. `exclude_ids` as in `evaluate_rankings` (leave-one-out when
    the queries are the database: `exclude_ids=np.arange(n)`).
    """
    q = _as_numpy(query_features).astype(np.float32, copy=False)
    db = np.ascontiguousarray(_as_numpy(db_features), dtype=np.float32)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"query features {q.shape} and database features {db.shape} must be 2-D with equal dims")
    if not (np.isfinite(q).all() and np.isfinite(db).all()):
        raise ValueError("features contain NaN or infinite values")
    if len(q) == 0:
        raise ValueError("no queries given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    q_labels = _labels("query_labels", query_labels, len(q))
    d_labels = _labels("db_labels", db_labels, len(db))
    ks = _check_ks(ks)
    excl = _exclude_ids(exclude_ids, len(q), len(db))
    n_rel = _count_relevant(q_labels, d_labels, excl)
    db_norms = np.einsum("ij,ij->i", db, db)
    step = max(1, min(batch_size, _EVAL_MAX_BLOCK // max(len(db), 1)))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(q), step):
        sl = slice(start, min(start + step, len(q)))
        # ||x||^2 - 2 q.x ranks like the squared distance (||q||^2 is the same along a row)
        dist = db_norms[None, :] - 2.0 * (q[sl] @ db.T)
        if excl is not None:
            rows = np.flatnonzero(excl[sl] >= 0)
            dist[rows, excl[sl][rows]] = np.inf
        order = np.argsort(dist, axis=1, kind="stable")
        rel = d_labels[order] == q_labels[sl][:, None]
        if excl is not None:
            rel[rows, -1] = False  # the excluded item sorts last (distance inf) and is never relevant
        parts.append(_per_query(rel, n_rel[sl], ks))
    per_query = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return _aggregate(per_query, n_rel, empty_queries)


def topk_accuracy(logits: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for each k, as {"top1": ..., "top5": ...}.

    A sample counts as correct at k when fewer than k classes score strictly higher than its label (ties in
    its favour).
    """
    scores = _as_numpy(logits).astype(np.float64)
    y = _labels("labels", labels)
    if scores.ndim != 2 or scores.shape[0] != len(y):
        raise ValueError(f"logits must be (n_samples={len(y)}, n_classes), got shape {scores.shape}")
    if len(y) == 0:
        raise ValueError("no samples given")
    if np.any((y < 0) | (y >= scores.shape[1])):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}) for {scores.shape[1]} classes")
    ks = _check_ks(ks)
    if max(ks) > scores.shape[1]:
        raise ValueError(f"k={max(ks)} exceeds the number of classes ({scores.shape[1]})")
    higher = (scores > scores[np.arange(len(y)), y][:, None]).sum(1)
    return {f"top{k}": float((higher < k).mean()) for k in ks}


def mean_per_class_accuracy(pred: Any, labels: Any) -> float:
    """Mean over the classes present in `labels` of the fraction of their samples predicted correctly."""
    p = _labels("pred", pred)
    y = _labels("labels", labels, len(p))
    if len(y) == 0:
        raise ValueError("no samples given")
    if np.any(y < 0):
        raise ValueError("labels must be >= 0 (unlabelled samples have no accuracy)")
    totals = np.bincount(y)
    correct = np.bincount(y[p == y], minlength=len(totals))
    present = totals > 0
    return float((correct[present] / totals[present]).mean())


def evaluate_hamming(
    query_codes: Any,
    query_labels: Any,
    db_codes: Any,
    db_labels: Any,
    ks: Sequence[int] = (1, 2, 4, 8),
    exclude_ids: Any = None,
    empty_queries: EmptyQueries = "exclude",
) -> dict[str, Any]:
    """Hamming ranking of the whole database for every query and its `ranking_metrics` (hashing mAP).

    Codes are binarised by sign (> 0 is a 1 bit; +-1 codes pass unchanged); ties in Hamming distance are broken by
    database id, as in `evaluate_retrieval`. Between +-1 codes the squared Euclidean distance is 4 x the Hamming
    distance, so this is `evaluate_retrieval` on the +-1 codes (exact: small integers in float32).
    """
    q, db = (np.where(_as_numpy(codes) > 0, 1.0, -1.0).astype(np.float32) for codes in (query_codes, db_codes))
    return evaluate_retrieval(q, query_labels, db, db_labels, ks=ks, exclude_ids=exclude_ids,
                              empty_queries=empty_queries)
