"""Vector indexes over FAISS factory strings (+ a torch exact backend), the store interface the engine reads
(`VectorStore`), the on-disk feature store and an in-memory one."""

from fgia.index.store import CorruptIndexError, FeatureStore, StoreRow, file_digest
from fgia.index.vector_index import (
    IndexConfig,
    IndexMismatchError,
    VectorIndex,
    create_index,
)
from fgia.index.vector_store import MemoryStore, VectorStore

__all__ = [
    "CorruptIndexError", "FeatureStore", "IndexConfig", "IndexMismatchError", "MemoryStore", "StoreRow",
    "VectorIndex", "VectorStore", "create_index", "file_digest",
]
