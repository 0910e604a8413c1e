"""What the service needs from a retrieval engine (`fgia.retrieval.RetrievalEngine` honours it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


class SearchResultLike(Protocol):
    """One query's answer, best match first."""

    ids: Sequence[int]
    distances: Sequence[float]
    paths: Sequence[Path]
    labels: Sequence[str | None] | None
    category: str | None
    region_box: Sequence[float] | None  # x1, y1, x2, y2 in query pixels
    confidence_map: Any  # small 2-D float array (or None)
    timings_ms: Mapping[str, float]


class SearchEngine(Protocol):
    """A loaded model + index that answers image queries."""

    def search(
        self, images: list[Image.Image], top_k: int = 10, pipeline: str = "c2f", query_expansion: bool = False
    ) -> list[SearchResultLike]: ...

    def stats(self) -> dict[str, Any]: ...

    def image_path(self, id: int) -> Path: ...
