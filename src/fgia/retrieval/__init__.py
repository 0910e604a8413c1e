"""OSFGIR retrieval: array-level search and query expansion, the trained system, the engine."""

from fgia.retrieval.engine import (
    PIPELINES,
    BuildResult,
    ImageFeatures,
    Pipeline,
    RetrievalEngine,
    SearchResult,
    build_index,
)
from fgia.retrieval.search import Ranking, average_query_expansion, knn, rerank
from fgia.retrieval.system import (
    SelectionConfig,
    System,
    SystemConfig,
    load_system,
    train_system,
)

__all__ = [
    "PIPELINES", "BuildResult", "ImageFeatures", "Pipeline", "Ranking", "RetrievalEngine", "SearchResult",
    "SelectionConfig", "System", "SystemConfig", "average_query_expansion", "build_index", "knn", "load_system",
    "rerank", "train_system",
]
