"""One tiny trained system and index, shared by the retrieval tests (trained once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fgia.data import OsfgirSplit, build_osfgir_split, read_dataset
from fgia.eval.osfgir import split_by_category
from fgia.retrieval.engine import build_index
from fgia.retrieval.system import SelectionConfig, SystemConfig, train_system

TINY_SYSTEM = SystemConfig(
    backbone="test_efficientnet",
    image_size=48,
    epochs=1,
    category_epochs=1,
    batch_size=8,
    coarse_dim=4,
    part_dim=8,
    top_k=12,
    top_k_fraction=None,
    offtheshelf_weight=0.3,
    classifier_dims=(2, 4, 0),
    selection=SelectionConfig(validation_fraction=0.0),
    device="cpu",
    hash_bits=(16, 64),
)
CODES = 64  # the index stores the 64-bit codes


@dataclass
class Built:
    split: OsfgirSplit
    system_dir: Path
    index_dir: Path


def tiny_split(manifest: Path) -> OsfgirSplit:
    datasets, distractors = split_by_category(read_dataset(manifest))
    return build_osfgir_split(datasets, aux_fraction=0.5, queries_per_class=2, distractors=distractors, seed=0)


@pytest.fixture(scope="session")
def built(tiny_synth, tmp_path_factory) -> Built:
    out = tmp_path_factory.mktemp("osfgir_system")
    split = tiny_split(tiny_synth)
    system_dir = train_system(split.auxiliary, TINY_SYSTEM, out / "system", progress=False)
    build_index(system_dir, split.database, out / "index", device="cpu", codes=CODES)
    return Built(split, system_dir, out / "index")
