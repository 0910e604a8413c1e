"""Exact nearest-neighbour search with torch (matmul + top-k), used for "Flat" on a GPU.

Distances are squared Euclidean, like faiss `IndexFlatL2`. Queries are processed in batches sized so that the
batch x database distance block never exceeds `max_block` elements, whatever the database size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

# fp16 dot products overflow past 65504; bounding squared norms (hence |q.x|) by half that keeps them finite.
FP16_MAX_SQ_NORM = 32768.0
# 2**25 float32 distances = 128 MiB per block: large enough to keep a GPU busy, small enough for a laptop.
DEFAULT_MAX_BLOCK = 2**25


def query_batches(n_queries: int, n_db: int, batch_size: int, max_block: int = DEFAULT_MAX_BLOCK) -> Iterator[slice]:
    """Slices over the queries, at most `batch_size` long and at most `max_block // n_db` (>= 1) long."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    step = max(1, min(batch_size, max_block // max(n_db, 1)))
    for start in range(0, n_queries, step):
        yield slice(start, min(start + step, n_queries))


def pairwise_sq_l2(queries: torch.Tensor, db: torch.Tensor, db_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances (nq, n) in float32, via ||q||^2 - 2 q.x + ||x||^2 (one matmul)."""
    dots = queries @ db.T
    q_norms = queries.float().pow(2).sum(1, keepdim=True)
    x_norms = db.float().pow(2).sum(1) if db_sq_norms is None else db_sq_norms
    # Rounding can make the expansion slightly negative for (near-)duplicates; distances are >= 0 by definition.
    return (q_norms - 2 * dots.float() + x_norms).clamp_min_(0)


class TorchFlatIndex:
    """Exact squared-L2 search over vectors held as one torch tensor (fp32, or fp16 storage on CUDA)."""

    def __init__(self, dim: int, device: torch.device, fp16: bool = False) -> None:
        self.dim = dim
        self.device = device
        self.dtype = torch.float16 if fp16 else torch.float32
        self._chunks: list[torch.Tensor] = []
        self._db = torch.empty(0, dim, dtype=self.dtype, device=device)
        self._sq_norms = torch.empty(0, dtype=torch.float32, device=device)

    @property
    def ntotal(self) -> int:
        return self._db.shape[0] + sum(c.shape[0] for c in self._chunks)

    def _to_device(self, x: np.ndarray, what: str) -> torch.Tensor:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.dtype == torch.float16 and len(x) and float(np.einsum("ij,ij->i", x, x).max()) > FP16_MAX_SQ_NORM:
            raise ValueError(
                f"{what} have squared norms above {FP16_MAX_SQ_NORM:g}, which overflow fp16 distances: "
                "normalise the features or use fp32"
            )
        return torch.from_numpy(x).to(self.device, self.dtype)

    def add(self, x: np.ndarray) -> None:
        self._chunks.append(self._to_device(x, "vectors"))

    def _consolidate(self) -> None:
        # Appends are gathered lazily so that many small add() calls do not copy the database each time.
        if self._chunks:
            new = torch.cat(self._chunks)
            self._chunks = []
            self._db = torch.cat([self._db, new])
            self._sq_norms = torch.cat([self._sq_norms, new.float().pow(2).sum(1)])

    def vectors(self) -> np.ndarray:
        """All stored vectors as a float32 array (n, dim)."""
        self._consolidate()
        return self._db.float().cpu().numpy()

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        self._consolidate()
        nq, n = queries.shape[0], self._db.shape[0]
        distances = np.full((nq, k), np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, n)
        if kk == 0:
            return distances, ids
        for sl in query_batches(nq, n, batch_size):
            q = self._to_device(queries[sl], "queries")
            d, i = pairwise_sq_l2(q, self._db, self._sq_norms).topk(kk, dim=1, largest=False, sorted=True)
            distances[sl, :kk] = d.cpu().numpy()
            ids[sl, :kk] = i.cpu().numpy()
        return distances, ids
