"""The synthetic fine-grained benchmark: determinism, manifest layout, knobs, and species that differ locally."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fgia.data.synthetic import (
    CATEGORIES,
    MANIFEST_COLUMNS,
    SynthConfig,
    draw_object,
    generate_benchmark,
    render_image,
    species_cues,
)


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        return list(reader)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_layout_and_counts(tiny_synth: Path) -> None:
    rows = read_rows(tiny_synth)
    assert len(rows) == 3 * 4 * 8
    per_label = Counter(r["label"] for r in rows)
    assert len(per_label) == 12 and set(per_label.values()) == {8}
    assert {r["category"] for r in rows} == {"birds", "cars", "food"}
    for r in rows:
        assert r["label"].startswith(r["category"] + "/sp")
        path = tiny_synth.parent / r["path"]
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        assert (x2 - x1) * (y2 - y1) > 0.1 * 64 * 64  # the object is a sizeable part of the picture
    # test_fraction 0.25 of 8 images: 2 test images per species
    tests = Counter(r["label"] for r in rows if r["split"] == "test")
    assert set(tests.values()) == {2} and len(tests) == 12
    assert {r["split"] for r in rows} == {"train", "test"}
    saved = yaml.safe_load((tiny_synth.parent / "synth_config.yaml").read_text())
    assert saved["images_per_species"] == 8 and saved["seed"] == 0


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    cfg = SynthConfig(categories=2, species_per_category=2, images_per_species=3, image_size=48, distractors=3)
    one = generate_benchmark(cfg, tmp_path / "one", workers=1, progress=False)
    two = generate_benchmark(cfg, tmp_path / "two", workers=2, progress=False)
    again = generate_benchmark(cfg, tmp_path / "again", workers=1, progress=False)
    assert folder_bytes(one.parent) == folder_bytes(two.parent) == folder_bytes(again.parent)
    other = generate_benchmark(SynthConfig(**{**vars(cfg), "seed": 1}), tmp_path / "other", workers=1, progress=False)
    assert one.read_bytes() != other.read_bytes()  # boxes move with the seed
    first = read_rows(one)[0]["path"]
    assert (one.parent / first).read_bytes() != (other.parent / first).read_bytes()


def test_distractors_are_unlabelled_objects(tmp_path: Path) -> None:
    cfg = SynthConfig(categories=1, species_per_category=3, images_per_species=2, image_size=48, distractors=5,
                      image_format="png")
    rows = read_rows(generate_benchmark(cfg, tmp_path, workers=1, progress=False))
    distractors = [r for r in rows if r["category"] == "distractor"]
    assert len(rows) == 11 and len(distractors) == 5
    assert all(r["label"] == "" and r["split"] == "" and r["path"].endswith(".png") for r in distractors)
    assert all(float(r["x2"]) > float(r["x1"]) for r in distractors)  # they still hold an object with a box


@pytest.mark.parametrize(
    "knobs",
    [
        {"categories": 5, "species_per_category": 2, "images_per_species": 1, "image_size": 40},
        {"categories": 1, "species_per_category": 7, "images_per_species": 4, "image_size": 72, "test_fraction": 0.5},
        {"categories": 2, "species_per_category": 1, "images_per_species": 5, "image_size": 32, "test_fraction": 0.0},
    ],
)
def test_every_knob_is_respected(tmp_path: Path, knobs: dict) -> None:
    cfg = SynthConfig(**knobs)
    rows = read_rows(generate_benchmark(cfg, tmp_path, workers=1, progress=False))
    assert len(rows) == cfg.categories * cfg.species_per_category * cfg.images_per_species
    assert len({r["category"] for r in rows}) == cfg.categories
    assert len({r["label"] for r in rows}) == cfg.categories * cfg.species_per_category
    n_test = sum(r["split"] == "test" for r in rows)
    assert n_test == cfg.categories * cfg.species_per_category * round(cfg.images_per_species * cfg.test_fraction)
    with Image.open(tmp_path / rows[-1]["path"]) as im:
        assert im.size == (cfg.image_size, cfg.image_size)


def test_difficulty_adds_nuisance() -> None:
    """Harder benchmarks vary more within a species: the same instance moves, turns and gets more clutter."""

    def spread(difficulty: float) -> float:
        cfg = SynthConfig(categories=1, species_per_category=1, images_per_species=12, image_size=48,
                          difficulty=difficulty)
        boxes = np.array([render_image(cfg, i)[1] for i in range(cfg.num_images)])
        return float((boxes[:, 2] - boxes[:, 0]).std() + (boxes[:, 3] - boxes[:, 1]).std())

    assert spread(1.0) > spread(0.0)


def test_species_are_distinct_cue_combinations() -> None:
    cfg = SynthConfig(categories=5, species_per_category=10)
    cues = species_cues(cfg)
    assert len(cues) == 50
    for name in CATEGORIES:
        combos = [c for label, c in cues.items() if label.startswith(name + "/")]
        assert len(set(combos)) == 10
    # species keep their cues when more species are added (a prefix of one seeded order)
    fewer = species_cues(SynthConfig(categories=5, species_per_category=4))
    assert all(cues[label] == c for label, c in fewer.items())


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_species_differ_only_in_small_local_parts(category: str) -> None:
    """Changing one cue, with the same within-species draws, changes a small part of the object, never nothing."""
    base = tuple(0 for _ in CATEGORIES[category].cues)
    reference = np.asarray(draw_object(category, base, np.random.default_rng(0), 128), np.int16)
    object_area = (reference[..., 3] > 0).sum()
    for k, n in enumerate(CATEGORIES[category].cues):
        other = tuple((v + 1) % n if i == k else v for i, v in enumerate(base))
        image = np.asarray(draw_object(category, other, np.random.default_rng(0), 128), np.int16)
        changed = (np.abs(image - reference).max(-1) > 40).sum()
        assert 0 < changed < 0.25 * object_area, (category, k, changed, object_area)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"categories": 0}, "categories"),
        ({"categories": 9}, "categories"),
        ({"species_per_category": 10_000}, "species_per_category"),
        ({"images_per_species": 0}, "images_per_species"),
        ({"image_size": 8}, "image_size"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"distractors": -1}, "distractors"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"image_format": "gif"}, "image_format"),
        ({"categories": 1, "species_per_category": 144, "distractors": 1}, "distractors"),
    ],
)
def test_bad_config_is_a_clear_error(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**knobs)


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    cfg = SynthConfig(categories=1, species_per_category=1, images_per_species=1, image_size=32)
    with pytest.raises(IndexError, match="out of range"):
        render_image(cfg, 1)
    with pytest.raises(ValueError, match="workers"):
        generate_benchmark(cfg, tmp_path, workers=0, progress=False)
    with pytest.raises(ValueError, match="unknown category"):
        draw_object("boats", (0,), np.random.default_rng(0), 64)
    with pytest.raises(ValueError, match="cues"):
        draw_object("birds", (0, 0, 9, 0), np.random.default_rng(0), 64)


def test_fgia_reads_it_like_real_data(tiny_synth: Path) -> None:
    from fgia.data import read_dataset

    dataset = read_dataset(tiny_synth.parent)
    assert len(dataset) == 96 and len(dataset.classes) == 12
    assert {s.category for s in dataset} == {"birds", "cars", "food"}
    assert len(dataset.split("test")) == 24
    first = dataset.samples[0]
    assert first.path.is_file() and dataset.classes[first.label] == "birds/sp00" and first.bbox is not None
