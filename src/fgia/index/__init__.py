"""Vector indexes over FAISS factory strings (+ a torch exact backend), the store interface the engine reads
(`VectorStore`) and its backends: the on-disk FAISS feature store, Milvus, and an in-memory one."""

from fgia.index.milvus_store import MilvusStore
from fgia.index.store import CorruptIndexError, FeatureStore, StoreRow, file_digest
from fgia.index.vector_index import (
    IndexConfig,
    IndexMismatchError,
    VectorIndex,
    create_index,
)
from fgia.index.vector_store import (
    STORES,
    MemoryStore,
    VectorStore,
    create_store,
    has_store,
    open_store,
)

__all__ = [
    "STORES", "CorruptIndexError", "FeatureStore", "IndexConfig", "IndexMismatchError", "MemoryStore", "MilvusStore",
    "StoreRow", "VectorIndex", "VectorStore", "create_index", "create_store", "file_digest", "has_store", "open_store",
]
