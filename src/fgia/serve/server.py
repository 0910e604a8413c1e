"""Load an index once and serve it with uvicorn (what `fgia serve` and `python -m fgia.serve` call)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from fgia.runtime import pick_device
from fgia.serve.app import create_app
from fgia.serve.config import ServeConfig


def run(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    config: ServeConfig | None = None,
    log_level: str = "info",
    verify: bool = False,
) -> None:
    """Load the engine from `index_dir` and serve the API and web page on http://host:port until interrupted.

    A damaged index is refused before serving (sizes and counts always, checksums too with `verify`).
    """
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory not found: {index_dir}")
    from fgia.retrieval.engine import (
        RetrievalEngine,  # models, timm, faiss: loaded only once the path is known good
    )

    resolved = pick_device(device)
    engine = RetrievalEngine.load(index_dir, device=str(resolved), verify=verify)
    uvicorn.run(create_app(engine, config or ServeConfig()), host=host, port=port, log_level=log_level)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServedIndex:
    """A `python -m fgia.serve` child process: its base URL and process id."""

    url: str
    pid: int


@contextmanager
def serve_subprocess(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "auto",
    batching: str = "on",
    startup_timeout_s: float = 120.0,
) -> Iterator[ServedIndex]:
    """Run `python -m fgia.serve` in a child process; yield it once /health answers; stop it on exit."""
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "fgia.serve", str(index_dir), "--host", host, "--port", str(port),
           "--device", device, "--batching", batching, "--log-level", "warning"]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fgia serve exited with code {proc.returncode} before answering /health")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1.0):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fgia serve did not answer {url}/health within {startup_timeout_s} s") from None
                time.sleep(0.2)
        yield ServedIndex(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
