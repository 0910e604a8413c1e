"""A tiny fake engine honouring fgia.serve.protocol.SearchEngine: ranks database images by mean colour."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@dataclass
class FakeResult:
    ids: list[int]
    distances: list[float]
    paths: list[Path]
    labels: list[str | None] | None
    category: str | None
    region_box: tuple[float, float, float, float] | None
    confidence_map: np.ndarray | None
    timings_ms: dict[str, float]


@dataclass
class FakeEngine:
    """Database: two images per colour; a query's answer is the database sorted by mean-colour distance."""

    paths: list[Path]
    labels: list[str]
    calls: list[dict] = field(default_factory=list)
    fail_with: Exception | None = None
    device: str = "cpu"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.means = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float64).mean((0, 1)) for p in self.paths])

    def search(self, images, top_k=10, pipeline="c2f", query_expansion=False):
        with self._lock:
            self.calls.append({"n": len(images), "top_k": top_k, "pipeline": pipeline, "qe": query_expansion,
                               "modes": [im.mode for im in images],
                               "means": [float(np.asarray(im, np.float64).mean()) for im in images]})
        if self.fail_with is not None:
            raise self.fail_with
        results = []
        for image in images:
            dist = np.linalg.norm(self.means - np.asarray(image, np.float64).mean((0, 1)), axis=1)
            order = np.argsort(dist, kind="stable")[:top_k]
            w, h = image.size
            results.append(FakeResult(
                ids=order.tolist(), distances=dist[order].tolist(), paths=[self.paths[i] for i in order],
                labels=[self.labels[i] for i in order], category="colours",
                region_box=(w * 0.25, h * 0.25, w * 0.75, h * 0.75),
                confidence_map=np.outer(np.hanning(4), np.hanning(6)).astype(np.float32),
                timings_ms={"coarse": 1.0, "fine": 2.0, "total": 3.0},
            ))
        return results

    def stats(self):
        return {"images": len(self.paths), "backbone": "fake-mean-colour", "dims": {"colour": 3}}

    def image_path(self, id: int) -> Path:
        return self.paths[id]


def _solid(colour: str, size: tuple[int, int] = (48, 32)) -> Image.Image:
    """A solid image of a named colour, with slight noise so JPEG/PNG files are not trivial."""
    rng = np.random.default_rng(list(COLOURS).index(colour))
    base = np.asarray(COLOURS[colour], np.float64)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, (size[1], size[0], 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def solid():
    """`solid(colour, size)`: a noisy solid-colour RGB image (colours: red, green, blue)."""
    return _solid


@pytest.fixture(scope="session")
def fake_db(tmp_path_factory) -> tuple[list[Path], list[str]]:
    root = tmp_path_factory.mktemp("fake_db")
    paths, labels = [], []
    for colour in COLOURS:
        for k in range(2):
            path = root / f"{colour}_{k}.{'png' if k else 'jpg'}"
            _solid(colour, size=(64 + 16 * k, 48)).save(path)
            paths.append(path)
            labels.append(f"{colour} species")
    return paths, labels


@pytest.fixture
def fake_engine(fake_db) -> FakeEngine:
    return FakeEngine(*fake_db)


@pytest.fixture(scope="session")
def engine_factory():
    """`engine_factory(paths, labels)`: a FakeEngine over other images."""
    return FakeEngine


@pytest.fixture(scope="session")
def real_index(tiny_synth, tmp_path_factory):
    """A real retrieval index over the tiny synthetic benchmark (timm `test_resnet`, 1 epoch, 64 px).

    Returns (index_dir, database dataset).
    """
    from fgia.data.protocols import build_osfgir_split
    from fgia.data.readers import read_dataset
    from fgia.retrieval.engine import build_index
    from fgia.retrieval.system import SystemConfig, train_system

    ds = read_dataset(tiny_synth)
    by_category = {c: ds.filter(lambda s, c=c: s.category == c) for c in sorted({s.category for s in ds})}
    split = build_osfgir_split(by_category, queries_per_class=1)
    out = tmp_path_factory.mktemp("serve_index")
    cfg = SystemConfig(backbone="test_resnet", epochs=1, batch_size=16, head_dim=64, part_dim=16, coarse_dim=8,
                       top_k=20, device="cpu", hash_bits=(64,))
    train_system(split.auxiliary, cfg, out / "system", progress=False)
    build_index(out / "system", split.database, out / "index", device="cpu", codes=64)
    return out / "index", split.database
