"""Load an index once and serve it with uvicorn (what `fgia serve` and `python -m fgia.serve` call)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import uvicorn

from fgia.serve.app import create_app
from fgia.runtime import pick_device
from fgia.serve.config import ServeConfig


def run(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    config: ServeConfig | None = None,
    log_level: str = "info",
) -> None:
    """Load the engine from `index_dir` and serve the API and web page on http://host:port until interrupted.

    With `config.batching="auto"`, concurrent queries are micro-batched when the engine runs on CUDA.
    """
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory not found: {index_dir}")
    from fgia.retrieval.engine import RetrievalEngine  # torch + models: only once there is an index to load

    resolved = pick_device(device)
    engine = RetrievalEngine.load(index_dir, device=str(resolved))
    cfg = config or ServeConfig()
    if cfg.batching == "auto":
        cfg = replace(cfg, batching="on" if resolved.type == "cuda" else "off")
    uvicorn.run(create_app(engine, cfg), host=host, port=port, log_level=log_level)
