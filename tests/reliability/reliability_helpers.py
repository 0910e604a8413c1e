"""Helpers of the reliability tests (imported by the test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def one_error_line(err: str) -> str:
    """The single `fgia: error:` line of a failed command (asserts there is exactly one line, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("fgia: error:"), err
    return lines[0]


def run_python(code: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with this process's sys.path (so it imports the same fgia)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)


def files_of(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class FakeResult:
    ids: list[int]
    distances: list[float]
    paths: list[Path]
    labels: list[str | None] | None
    category: str | None
    region_box: tuple[float, float, float, float] | None
    confidence_map: Any
    timings_ms: dict[str, float]


@dataclass
class FakeEngine:
    """An engine whose database is one image (written at `root`); records every search call."""

    root: Path
    calls: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        from PIL import Image

        self.path = self.root / "db.png"
        Image.new("RGB", (8, 8), (10, 20, 30)).save(self.path)

    def search(self, images, top_k=10, pipeline="c2f", query_expansion=False):
        self.calls.append(len(images))
        return [FakeResult([0], [0.0], [self.path], ["only"], "things", None, None, {"total": 1.0}) for _ in images]

    def stats(self) -> dict[str, Any]:
        return {"images": 1, "backbone": "fake"}

    def image_path(self, id: int) -> Path:
        if id != 0:
            raise IndexError(id)
        return self.path
