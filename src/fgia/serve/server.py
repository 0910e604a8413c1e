"""Load an index once and serve it with uvicorn (what `fgia serve` and `python -m fgia.serve` call)."""

from __future__ import annotations

import os
from pathlib import Path

import uvicorn

from fgia.serve.app import create_app
from fgia.serve.config import ServeConfig


def run(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    config: ServeConfig | None = None,
    log_level: str = "info",
) -> None:
    """Load the engine from `index_dir` and serve the API and web page on http://host:port until interrupted."""
    from fgia.retrieval.engine import RetrievalEngine

    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory not found: {index_dir}")
    engine = RetrievalEngine.load(index_dir, device=device)
    uvicorn.run(create_app(engine, config), host=host, port=port, log_level=log_level)
