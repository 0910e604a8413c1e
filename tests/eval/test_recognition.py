"""Recognition rows: the split, logits from the cache equal to logits from the images, the probe, per-head rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fgia.data import read_dataset
from fgia.eval.methods import MethodEmbedder
from fgia.eval.recognition import (
    linear_probe,
    logits_of,
    method_rows,
    recognition_split,
)
from fgia.eval.survey import survey_recipe
from fgia.models import create_trunk
from fgia.train.cache import trunk_cache

SIZE = 64


@pytest.fixture(scope="module")
def setting(tiny_synth, tiny_weights):
    ds = read_dataset(tiny_synth)
    recipe = replace(survey_recipe(), backbone="test_efficientnet", weights=str(tiny_weights), image_size=SIZE,
                     epochs=1, batch_size=8, workers=0, device="cpu")
    trunk = create_trunk(recipe.backbone, recipe.weights).eval()
    cache = trunk_cache(trunk.stages[:4], ds.samples, image_size=SIZE, mean=trunk.mean, std=trunk.std,
                        views=("resize", "hflip"))
    train, test, protocol = recognition_split(ds)
    return recipe, trunk, cache, train, test, protocol


def test_recognition_split_prefers_the_shipped_one(setting, tiny_synth):
    *_, train, test, protocol = setting
    assert protocol == "the shipped train/test split" and {s.split for s in test} == {"test"}
    unsplit = read_dataset(tiny_synth)
    unsplit.samples = [replace(s, split=None) for s in unsplit.samples]
    train2, test2, protocol2 = recognition_split(unsplit, 0.5, seed=3)
    assert protocol2.startswith("a stratified split") and len(test2) == len(unsplit) // 2


def test_cached_logits_equal_image_logits_and_rows_per_head(setting):
    recipe, trunk, cache, train, test, _ = setting
    embedder = MethodEmbedder(train, recipe, cache)
    rows = method_rows(embedder, "cnnets", test, cache)
    assert [r.method for r in rows] == ["cnnets", "cnnets/Conv-Net", "cnnets/Norm-Net"]
    assert all(r.cached and r.n_test == len(test) and r.epochs == 1 and 0 <= r.top1 <= r.top5 <= 1 for r in rows)
    model, _ = embedder.train("cnnets")
    from_cache, index = logits_of(model, test.samples, SIZE, cache, device="cpu")
    from_images, index2 = logits_of(model, test.samples, SIZE, None, device="cpu")
    assert np.array_equal(index, index2) and set(from_cache) == {"", "conv", "norm"}
    # the cache holds float16 maps: the same logits up to that rounding
    assert np.allclose(from_cache[""], from_images[""], atol=0.05)
    np.testing.assert_allclose(from_cache[""], (from_cache["conv"] + from_cache["norm"]) / 2, atol=1e-5)
    labels = np.asarray(test.labels)
    assert rows[0].top1 == pytest.approx(np.mean(from_cache[""].argmax(1) == labels))


def test_attention_crop_row_is_not_cached(setting):
    recipe, trunk, cache, train, test, _ = setting
    [row] = method_rows(MethodEmbedder(train, recipe, cache), "attention_crop", test, cache)
    assert not row.cached and "no cache" in row.trainable and row.n_test == len(test)


def test_attention_crop_warm_start_trains_the_first_pass_before_both(setting):
    recipe, trunk, cache, train, test, _ = setting
    cold, _ = MethodEmbedder(train, recipe, cache).train("attention_crop")
    warm_recipe = replace(recipe, warm_start_epochs={"attention_crop": 2})
    warm, _ = MethodEmbedder(train, warm_recipe, cache).train("attention_crop")
    # same seed and the same final training: only the warm start can make the weights differ
    assert not np.allclose(cold.classifier.weight.detach().numpy(), warm.classifier.weight.detach().numpy())
    frozen = trunk.stages[:4].state_dict()
    assert all(np.array_equal(v.numpy(), warm.trunk.stages[:4].state_dict()[k].numpy()) for k, v in frozen.items())


def test_linear_probe_learns_separable_features(setting):
    recipe, trunk, cache, train, test, _ = setting
    row, c = linear_probe(cache, trunk, 4, train, test, cs=(0.1, 1.0), seed=0, device="cpu")
    assert c in (0.1, 1.0) and row.method == "linear_probe" and row.cached and row.epochs == 0
    assert row.n_test == len(test) and 0 <= row.top1 <= row.top5 <= 1
    # the probe is a real classifier: on its own training images it does better than chance (1/12)
    train_as_test, _ = linear_probe(cache, trunk, 4, train, train, cs=(1.0,), device="cpu")
    assert train_as_test.top1 > 0.5
