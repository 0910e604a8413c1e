"""Suite-wide settings: offline hub, small thread pools, and a tiny synthetic benchmark shared by tests."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images in ../shared/data; tests that need them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark (3 meta-categories x 4 species x 8 images, 64 px); returns its manifest."""
    from fgia.data.synthetic import SynthConfig, generate_benchmark

    out = tmp_path_factory.mktemp("tiny_synth")
    cfg = SynthConfig(categories=3, species_per_category=4, images_per_species=8, image_size=64, seed=0)
    return generate_benchmark(cfg, out, workers=1, progress=False)
