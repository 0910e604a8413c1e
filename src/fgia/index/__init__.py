"""Vector indexes over FAISS factory strings (+ a torch exact backend) and the on-disk feature store."""

from fgia.index.store import CorruptIndexError, FeatureStore, StoreRow, file_digest
from fgia.index.vector_index import IndexConfig, IndexMismatchError, VectorIndex, create_index

__all__ = ["CorruptIndexError", "FeatureStore", "IndexConfig", "IndexMismatchError", "StoreRow", "VectorIndex", "create_index", "file_digest"]
