"""Array-level retrieval: exact k-NN, coarse-to-fine re-ranking and average query expansion.

Everything here works on float32 NumPy matrices (one row per image) and returns a `Ranking`; distances are
Euclidean (not squared). Candidate lists may be padded with -1 (an index returning fewer than K hits);
padding never appears in a result.

Query expansion (the paper's "average the top-5 and search again") is *average query expansion* with the
query included: q' = mean(q, f_1, ..., f_n) over the features of the n best hits; including q keeps the expanded
query anchored when some of the top-n are wrong. The engine (`fgia.retrieval.engine`) runs the search again with
q', the coarse stage included.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Ranking:
    """Ranked hits per query: `ids` (Q, k) int64 database rows, `distances` (Q, k) float32, ascending.

    Rows shorter than k (fewer candidates than asked) are padded with id -1 and distance +inf.
    """

    ids: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Hits of query `i` without padding."""
        keep = self.ids[i] >= 0
        return self.ids[i][keep], self.distances[i][keep]


def as_matrix(x: np.ndarray, name: str, dim: int | None = None, check_finite: bool = True) -> np.ndarray:
    """`x` as a C-contiguous float32 (n, d) matrix; a clear error for the wrong shape or non-finite values.

    Databases are checked once when built or loaded, so the per-query path passes `check_finite=False`.
    """
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, expected {dim}")
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def knn(queries: np.ndarray, database: np.ndarray, k: int) -> Ranking:
    """Exact Euclidean k nearest neighbours of each query in `database` (single-stage search)."""
    db = as_matrix(database, "database", check_finite=False)
    q = as_matrix(queries, "queries", db.shape[1])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(db) == 0:
        raise ValueError("cannot search an empty database")
    kk = min(k, len(db))
    sq, ids = faiss.knn(q, db, kk)
    return _pad(ids.astype(np.int64), np.sqrt(np.maximum(sq, 0)).astype(np.float32), k)


def rerank(
    queries: np.ndarray,
    vectors: np.ndarray,
    candidates: np.ndarray,
    k: int | None = None,
    demote: np.ndarray | None = None,
) -> Ranking:
    """Re-rank each query's `candidates` (Q, K) database ids by Euclidean distance between the query (Q, d) and
    the candidates' fine features `vectors` (Q, K, d) (e.g. each query's under its routed model).

    Candidates marked in `demote` (Q, K) are ranked after all the others (each group by distance), e.g. database
    images of another meta-category than the query's. Padding (id -1) goes last. Ties keep the candidate order.
    Returns the best `k` (default: all K) per query.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or len(cand) != len(queries):
        raise ValueError(f"candidates must be (Q, K) with Q={len(queries)}, got shape {cand.shape}")
    q = as_matrix(queries, "queries")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (*cand.shape, q.shape[1]):
        raise ValueError(f"candidate vectors must be {(*cand.shape, q.shape[1])}, got shape {vectors.shape}")
    diff = vectors - q[:, None, :]
    return order_candidates(np.sqrt(np.einsum("qkd,qkd->qk", diff, diff)), cand, k, demote)


def order_candidates(distances: np.ndarray, candidates: np.ndarray, k: int | None = None,
                     demote: np.ndarray | None = None) -> Ranking:
    """`rerank` from the distances (Q, K) of each query to its `candidates` (Q, K) already computed."""
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or np.shape(distances) != cand.shape:
        raise ValueError(f"distances must have the candidates' shape {cand.shape}, got {np.shape(distances)}")
    valid = cand >= 0
    dist = np.where(valid, distances, np.inf).astype(np.float32)
    order = np.argsort(dist, axis=1, kind="stable")
    if demote is not None:
        demote = np.asarray(demote, dtype=bool)
        if demote.shape != cand.shape:
            raise ValueError(f"demote must have the candidates' shape {cand.shape}, got {demote.shape}")
        # A stable sort on the flags, taken in distance order, moves demoted candidates last.
        flags = np.take_along_axis(demote & valid, order, axis=1)
        order = np.take_along_axis(order, np.argsort(flags, axis=1, kind="stable"), axis=1)
    ids = np.take_along_axis(np.where(valid, cand, -1), order, axis=1)
    out = Ranking(ids=ids, distances=np.take_along_axis(dist, order, axis=1))
    return out if k is None else _pad(out.ids[:, :k], out.distances[:, :k], k)


def average_query_expansion(queries: np.ndarray, hit_vectors: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Average query expansion: each query (Q, d) averaged with the features of its hits (Q, n, d); `valid`
    (Q, n) marks the real hits (a query with fewer than n hits averages fewer)."""
    q = as_matrix(queries, "queries")
    hits = np.asarray(hit_vectors, dtype=np.float32)
    if hits.ndim != 3 or hits.shape[0] != len(q) or hits.shape[2] != q.shape[1]:
        raise ValueError(f"hit vectors must be (Q={len(q)}, n, {q.shape[1]}), got shape {hits.shape}")
    mask = np.ones(hits.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    summed = np.where(mask[..., None], hits, 0.0).sum(axis=1)
    return ((q + summed) / (1 + mask.sum(axis=1, keepdims=True))).astype(np.float32)


def _pad(ids: np.ndarray, distances: np.ndarray, k: int) -> Ranking:
    short = k - ids.shape[1]
    if short > 0:
        ids = np.pad(ids, ((0, 0), (0, short)), constant_values=-1)
        distances = np.pad(distances, ((0, 0), (0, short)), constant_values=np.inf)
    return Ranking(ids=ids.astype(np.int64), distances=distances.astype(np.float32))
