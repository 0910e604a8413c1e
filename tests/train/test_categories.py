"""fit_per_category: a unified model, one per meta-category and a coarse router, each in its own folder."""

from __future__ import annotations

import pytest

from fgia.models import load_model
from fgia.train import COARSE, UNIFIED, fit_per_category
from fgia.train.categories import coarse_dataset


def test_one_model_per_category_plus_unified_and_coarse(tiny_ds, tmp_path, tiny_config):
    train = tiny_ds.split("train")
    categories = sorted({s.category for s in train.samples})
    results = fit_per_category(tiny_config(epochs=1, batch_size=16), train, tmp_path, progress=False, coarse=True)

    assert set(results) == {UNIFIED, COARSE, *categories}
    assert results[UNIFIED].classes == train.classes
    assert results[COARSE].classes == categories
    for category in categories:
        species = sorted({train.classes[s.label] for s in train.samples if s.category == category})
        _, info = load_model(tmp_path / category)
        assert sorted(info["class_names"]) == species
        assert results[category].model.num_classes == len(species)
        assert results[category].out_dir == tmp_path / category


def test_categories_must_be_known(tiny_ds, tmp_path, tiny_config):
    train = tiny_ds.split("train")
    unlabelled = train.filter(lambda s: True)
    unlabelled.samples[0] = type(unlabelled.samples[0])(path=unlabelled.samples[0].path, label=0)
    with pytest.raises(ValueError, match="no meta-category"):
        fit_per_category(tiny_config(), unlabelled, tmp_path, progress=False)
    with pytest.raises(ValueError, match="categories outside"):
        coarse_dataset(train, ["only-this"])


def test_category_models_can_start_from_the_unified_one(tiny_ds, tmp_path, tiny_config):
    train = tiny_ds.split("train")
    category = sorted({s.category for s in train.samples})[0]
    cfg = tiny_config(epochs=2, batch_size=16, lr=1e-3)
    scratch = fit_per_category(cfg, train, tmp_path / "scratch", progress=False)
    tuned = fit_per_category(cfg, train, tmp_path / "tuned", progress=False, category_epochs=1)

    assert len(tuned[category].history) == 1 and len(scratch[category].history) == 2
    _, info = load_model(tmp_path / "tuned" / category)
    assert info["config"]["num_classes"] == tuned[category].model.num_classes
    unified = dict(tuned[UNIFIED].model.named_parameters())
    layer = "heads.conv.features.0.weight"  # a new layer: far from the unified model unless started from it
    from_unified = (dict(tuned[category].model.named_parameters())[layer] - unified[layer]).norm()
    from_scratch = (dict(scratch[category].model.named_parameters())[layer] - unified[layer]).norm()
    assert from_unified < 0.5 * from_scratch
    with pytest.raises(ValueError, match="category_epochs"):
        fit_per_category(cfg, train, tmp_path / "bad", progress=False, category_epochs=0)
