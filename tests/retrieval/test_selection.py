"""Choosing the recipe on held-out auxiliary species: the split, the score and the choices it keeps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fgia.data import (
    DatasetError,
    FineGrainedDataset,
    Sample,
    hold_out_classes,
    read_dataset,
)
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.retrieval.system import (
    SelectionConfig,
    SystemConfig,
    _trunk_cache,
    select_recipe,
    train_system,
    validation_map,
)


def _dataset(species_per_category: dict[str, int], images: int = 2) -> FineGrainedDataset:
    classes, samples = [], []
    for category, n in species_per_category.items():
        for k in range(n):
            samples += [Sample(f"/{category}/{k}/{i}.jpg", len(classes), category=category) for i in range(images)]
            classes.append(f"{category}/{k}")
    return FineGrainedDataset("toy", "/", classes, samples)


def test_hold_out_takes_a_share_of_each_categorys_species():
    ds = _dataset({"birds": 10, "cars": 4})
    kept, held = hold_out_classes(ds, 0.2, seed=0)
    by_category = lambda d, c: {name for name in d.classes if name.startswith(c)}  # noqa: E731
    assert len(by_category(held, "birds")) == 2 and len(by_category(held, "cars")) == 2  # at least 2 each
    assert set(kept.classes).isdisjoint(held.classes) and len(kept) + len(held) == len(ds)
    assert all(s.label >= 0 and held.classes[s.label].startswith(s.category) for s in held.samples)
    assert hold_out_classes(ds, 0.2, seed=0)[1].classes == held.classes  # seeded
    assert hold_out_classes(ds, 0.5, seed=1)[1].classes != held.classes
    with pytest.raises(DatasetError, match="at least 3"):
        hold_out_classes(_dataset({"birds": 10, "cars": 2}), 0.2)


def test_validation_map_is_leave_one_out_within_each_category():
    # Category a: query 0 ranks [2 (wrong), 1 (right)] -> AP 1/2; the others find their match first.
    features = np.array([[0.0], [1.0], [0.4], [1.5], [10.0], [10.1]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    categories = np.array(["a", "a", "a", "a", "b", "b"])
    # a: q0 -> 2,1,3: AP 1/2; q1 -> 3 (wrong),2,0: AP 1/3; q2 -> 0,1,3: AP 1/3; q3 -> 1,2: AP 1/2. b: 1, 1.
    expected = (1 / 2 + 1 / 3 + 1 / 3 + 1 / 2 + 1 + 1) / 6
    assert validation_map(features, labels, categories) == pytest.approx(expected)
    # Were the categories one, image 4 and 5 would stay each other's nearest: the same score here.
    assert validation_map(features, labels, np.array(["a"] * 6)) == pytest.approx(expected)


@pytest.fixture(scope="module")
def toy_auxiliary(tmp_path_factory) -> FineGrainedDataset:
    cfg = SynthConfig(categories=2, species_per_category=6, images_per_species=6, image_size=48, seed=1)
    manifest = generate_benchmark(cfg, tmp_path_factory.mktemp("selection"), workers=1, progress=False)
    return read_dataset(manifest)


SMALL = SystemConfig(backbone="test_efficientnet", image_size=48, epochs=1, batch_size=8, coarse_dim=4, part_dim=8,
                     top_k=12, classifier_dims=(0,), device="cpu",
                     selection=SelectionConfig(validation_fraction=0.4, heads=("cosine", "cnnets"), max_epochs=2,
                                               category_epochs=1, offtheshelf_weights=(0.3,), qe_tops=(2,)))


def test_select_recipe_reports_every_choice_and_keeps_only_gains(toy_auxiliary):
    fit_set, val_set = hold_out_classes(toy_auxiliary, 0.4, seed=0)
    cache = _trunk_cache(toy_auxiliary, SMALL, progress=False)
    chosen, report = select_recipe(fit_set, val_set, SMALL, cache, progress=False)
    assert set(report["heads"]) == {"cosine", "cnnets"} and all(len(c) == 2 for c in report["heads"].values())
    best_head = max(report["heads"], key=lambda h: max(report["heads"][h]))
    assert chosen.head == best_head and chosen.epochs == 1 + int(np.argmax(report["heads"][best_head]))
    assert chosen.selection.validation_fraction == 0  # the chosen recipe is final
    steps = {s["choice"]: s for s in report["steps"][1:]}
    assert set(steps) == {"category models (1 epochs from the unified one)", "off-the-shelf fusion w=0.3",
                          "region part", "query expansion, top 2"}
    assert (chosen.category_epochs == 1) == steps["category models (1 epochs from the unified one)"]["kept"]
    assert (chosen.offtheshelf_weight == 0.3) == steps["off-the-shelf fusion w=0.3"]["kept"]
    assert chosen.regions == steps["region part"]["kept"]
    assert (chosen.qe_top == 2) == steps["query expansion, top 2"]["kept"]
    current = report["base_val_mAP"]  # each step is tried on top of the ones kept before it
    for step in report["steps"][1:]:
        assert step["kept"] == (step["val_mAP"] > current + SMALL.selection.min_gain)
        current = step["val_mAP"] if step["kept"] else current
    assert report["chosen_val_mAP"] == pytest.approx(current)
    assert report["validation_species"] == len(val_set.classes) and report["seconds"] > 0


def test_a_system_without_enough_species_skips_selection(toy_auxiliary, tmp_path):
    two_species = toy_auxiliary.filter(lambda s: s.label % 6 < 2)  # 2 species per category
    cfg = replace(SMALL, selection=replace(SMALL.selection, heads=("cosine",)))
    train_system(two_species, cfg, tmp_path / "system", progress=False)
    import json

    info = json.loads((tmp_path / "system" / "system.json").read_text())
    assert "at least 3" in info["selection"]["skipped"]
