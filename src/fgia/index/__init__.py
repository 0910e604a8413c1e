"""Vector indexes over FAISS factory strings (+ a torch exact backend) and the on-disk feature store."""

from fgia.index.store import FeatureStore, StoreRow
from fgia.index.vector_index import IndexConfig, IndexMismatchError, VectorIndex, create_index

__all__ = ["FeatureStore", "IndexConfig", "IndexMismatchError", "StoreRow", "VectorIndex", "create_index"]
