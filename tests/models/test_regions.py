"""Discriminative-region boxes on hand-made confidence maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgia.models.regions import normalize_map, region_box, region_boxes, scale_boxes


def _map(h=10, w=10):
    return np.zeros((h, w), dtype=np.float32)


def test_single_blob_box_in_map_fractions():
    m = _map(10, 20)
    m[2:5, 4:10] = 3.0
    np.testing.assert_allclose(region_box(m), [4 / 20, 2 / 10, 10 / 20, 5 / 10])


def test_largest_component_wins_then_mass_breaks_ties():
    m = _map()
    m[0:2, 0:2] = 1.0  # area 4, strongest
    m[5:8, 5:8] = 0.8  # area 9
    np.testing.assert_allclose(region_box(m), [0.5, 0.5, 0.8, 0.8])
    tie = _map()
    tie[0:2, 0:2] = 0.6
    tie[6:8, 6:8] = 1.0
    np.testing.assert_allclose(region_box(tie), [0.6, 0.6, 0.8, 0.8])


def test_threshold_controls_extent():
    m = _map()
    m[3:7, 3:7] = 0.4  # a weaker ring around the peak
    m[4:6, 4:6] = 1.0
    np.testing.assert_allclose(region_box(m, threshold=0.5), [0.4, 0.4, 0.6, 0.6])
    np.testing.assert_allclose(region_box(m, threshold=0.3), [0.3, 0.3, 0.7, 0.7])


def test_diagonal_neighbours_are_one_component():
    m = _map()
    m[2, 2] = m[3, 3] = m[4, 4] = 1.0
    np.testing.assert_allclose(region_box(m, min_area=0.0), [0.2, 0.2, 0.5, 0.5])


def test_fallback_to_whole_image():
    m = _map()
    m[1, 1] = 1.0  # one cell of 100: below min_area 0.02
    np.testing.assert_allclose(region_box(m, min_area=0.02), [0, 0, 1, 1])
    np.testing.assert_allclose(region_box(np.full((4, 4), 7.0)), [0, 0, 1, 1])


def test_normalize_and_bad_input():
    norm = normalize_map(np.array([[2.0, 4.0], [-6.0, 10.0]]))
    np.testing.assert_allclose(norm, [[0.2, 0.4], [0.0, 1.0]])  # divided by the maximum, negatives clipped
    np.testing.assert_allclose(normalize_map(np.full((2, 2), -1.0)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        region_box(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        region_box(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="threshold"):
        region_box(_map(), threshold=1.5)


def test_divided_by_the_maximum_not_stretched_to_the_minimum():
    m = np.full((10, 10), 6.0)
    m[2:4, 2:4] = 10.0  # everything is at least 0.6 of the peak: the whole map is the region
    np.testing.assert_allclose(region_box(m), [0, 0, 1, 1])


def test_maps_are_resized_to_the_input_before_the_box():
    maps = torch.zeros(1, 4, 4)
    maps[0, 1:3, 1:3] = 1.0
    np.testing.assert_allclose(region_boxes(maps)[0], [0.25, 0.25, 0.75, 0.75])
    # bilinear upsampling spreads the peak: at t = 0.5 the box still ends half way into the neighbours
    np.testing.assert_allclose(region_boxes(maps, upsample_to=64)[0], [0.25, 0.25, 0.75, 0.75], atol=2 / 64)


def test_batch_and_scaling_to_pixels():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0:2, 0:2] = 1
    maps[1, 2:4, 1:4] = 1
    boxes = region_boxes(maps)
    np.testing.assert_allclose(boxes, [[0, 0, 0.5, 0.5], [0.25, 0.5, 1, 1]])
    pixels = scale_boxes(boxes, np.array([200, 40]), np.array([100, 80]))
    np.testing.assert_allclose(pixels, [[0, 0, 100, 50], [10, 40, 40, 80]])
