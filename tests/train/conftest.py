"""Shared pieces of the trainer tests: one meta-category of the tiny synthetic benchmark, a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgia.data import read_dataset
from fgia.data.samples import FineGrainedDataset
from fgia.train import TrainConfig


@pytest.fixture(scope="session")
def tiny_ds(tiny_synth: Path) -> FineGrainedDataset:
    return read_dataset(tiny_synth)


@pytest.fixture(scope="session")
def one_category(tiny_ds: FineGrainedDataset) -> FineGrainedDataset:
    """The 4 species of the first meta-category (6 train + 2 test images each), labels 0..3."""
    from fgia.train.categories import category_classes, category_subset

    category = sorted({s.category for s in tiny_ds.samples})[0]
    return category_subset(tiny_ds, category, category_classes(tiny_ds, category))


def _tiny_config(out_dir: Path | None = None, **overrides) -> TrainConfig:
    base = dict(model="cnnets", model_kwargs={"backbone": "test_resnet", "head_dim": 16}, image_size=64,
                epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=1e-4, warmup_epochs=0.5,
                workers=0, device="cpu", out_dir=out_dir)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def tiny_config():
    """A factory of configs for CN-Nets on timm's test_resnet at 64 px (well under a second per epoch)."""
    return _tiny_config
