"""The readers and protocols on the real images in ../shared/data (skipped when absent)."""

from __future__ import annotations

import pytest

from fgia.data import (
    build_osfgir_split,
    load_image,
    official_split,
    read_shared_composite,
    zero_shot_split,
)

pytestmark = pytest.mark.shared_data


def test_shared_composite_reads_all_three_layouts(shared_data):
    comp = read_shared_composite(shared_data)
    birds, cars, flowers = comp["birds"], comp["cars"], comp["flowers"]
    assert (len(birds), len(birds.classes)) == (5902, 100)
    assert (len(cars), len(cars.classes)) == (8144, 196)
    assert (len(flowers), len(flowers.classes)) == (5544, 90)
    assert birds.classes[0] == "001.Black_footed_Albatross"
    assert "pink primrose" in flowers.classes  # names from cat_to_name.json
    assert {s.category for s in cars} == {"cars"}
    # cars are cropped to their box: every devkit box is the whole image
    for s in cars.samples[:5]:
        im = load_image(s.path)
        assert s.bbox == (0.0, 0.0, float(im.width), float(im.height))
    for ds in comp.values():
        assert all(s.path.is_file() for s in ds.samples[:: max(1, len(ds) // 50)])

    train, test = official_split(birds)
    assert len(train) + len(test) == 5902 and train.classes == test.classes
    zs_train, zs_test = zero_shot_split(cars)
    assert (len(zs_train.classes), len(zs_test.classes)) == (98, 98)

    split = build_osfgir_split(comp, seed=0, max_images_per_class=10)
    assert not set(split.auxiliary.classes) & set(split.database.classes)
    assert {s.category for s in split.queries} == {"birds", "cars", "flowers"}
