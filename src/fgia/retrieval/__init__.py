"""OSFGIR retrieval: array-level coarse-to-fine search + query expansion, the trained system, the engine."""

from fgia.retrieval.engine import PIPELINES, BuildResult, ImageFeatures, RetrievalEngine, SearchResult, build_index, search_files
from fgia.retrieval.search import Ranking, coarse_to_fine, expand_queries, fine_stage, knn, rerank
from fgia.retrieval.system import System, SystemConfig, load_system, train_system

__all__ = [
    "PIPELINES", "BuildResult", "ImageFeatures", "Ranking", "RetrievalEngine", "SearchResult", "System",
    "SystemConfig", "build_index", "coarse_to_fine", "expand_queries", "fine_stage", "knn", "load_system",
    "rerank", "search_files", "train_system",
]
