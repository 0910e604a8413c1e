"""Query counters and latency percentiles over a bounded window, for GET /stats."""

from __future__ import annotations

from collections import deque

import numpy as np


class LatencyStats:
    """Counts served/failed queries and keeps the last `window` latencies (a ring buffer)."""

    def __init__(self, window: int):
        self._latencies: deque[float] = deque(maxlen=window)
        self.served = 0
        self.failed = 0

    def record(self, latency_ms: float) -> None:
        """Count one answered query."""
        self.served += 1
        self._latencies.append(latency_ms)

    def record_failure(self) -> None:
        """Count one query the engine could not answer."""
        self.failed += 1

    def summary(self) -> dict[str, float | int | None]:
        """Served/failed counts and p50/p90/p99/mean latency (ms) of the window; None before any query."""
        window = np.fromiter(self._latencies, dtype=np.float64)
        out: dict[str, float | int | None] = {"queries_served": self.served, "queries_failed": self.failed,
                                               "window": int(window.size)}
        for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
            out[name] = round(float(np.percentile(window, q)), 3) if window.size else None
        out["mean_ms"] = round(float(window.mean()), 3) if window.size else None
        return out
