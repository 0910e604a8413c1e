"""fit_per_category: a unified model, then one model per meta-category fine-tuned from it."""

from __future__ import annotations

import pytest

from fgia.models import load_model
from fgia.train import UNIFIED, fit_per_category


def test_one_model_per_category_started_from_the_unified_one(tiny_ds, tmp_path, tiny_config):
    train = tiny_ds.split("train")
    categories = sorted({s.category for s in train.samples})
    cfg = tiny_config(epochs=2, batch_size=16, lr=1e-3)
    results = fit_per_category(cfg, train, tmp_path, category_epochs=1, progress=False)

    assert set(results) == {UNIFIED, *categories}
    assert results[UNIFIED].classes == train.classes and len(results[UNIFIED].history) == 2
    unified = dict(results[UNIFIED].model.named_parameters())
    for category in categories:
        species = sorted({train.classes[s.label] for s in train.samples if s.category == category})
        _, info = load_model(tmp_path / category)
        assert sorted(info["class_names"]) == species
        assert results[category].model.num_classes == info["config"]["num_classes"] == len(species)
        assert results[category].out_dir == tmp_path / category and len(results[category].history) == 1
        # it moved from the unified model's weights, a little: one epoch at a small rate
        layer = "heads.conv.stages.4.layer4.0.conv1.weight"
        moved = (dict(results[category].model.named_parameters())[layer] - unified[layer]).norm()
        assert 0 < moved < 0.5 * unified[layer].norm()


def test_categories_must_be_known(tiny_ds, tmp_path, tiny_config):
    train = tiny_ds.split("train")
    unlabelled = train.filter(lambda s: True)
    unlabelled.samples[0] = type(unlabelled.samples[0])(path=unlabelled.samples[0].path, label=0)
    with pytest.raises(ValueError, match="no meta-category"):
        fit_per_category(tiny_config(), unlabelled, tmp_path, category_epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs >= 1"):
        fit_per_category(tiny_config(epochs=1, batch_size=16), train, tmp_path, category_epochs=0, progress=False)
