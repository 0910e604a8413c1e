"""overlay(): heat map blended over the image, region box drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgia.features.visualize import overlay


def test_overlay_heat_and_box():
    image = Image.new("L", (80, 40), 128)  # grayscale input must come back RGB
    heat = np.zeros((4, 8), dtype=np.float32)
    heat[:, 6:] = 1.0  # hot on the right
    out = np.asarray(overlay(image, heat, box=(10, 10, 30, 30)))
    assert out.shape == (40, 80, 3)
    hot, cold = out[20, 75], out[20, 45]
    assert hot[0] > cold[0] and cold[2] > hot[2]  # red where confident, blue elsewhere
    assert tuple(out[10, 20]) == (0, 255, 0)  # box edge drawn in lime
    assert tuple(out[20, 20]) != (0, 255, 0)


def test_overlay_rejects_bad_box_and_alpha():
    image = Image.new("RGB", (10, 10))
    with pytest.raises(ValueError, match="box"):
        overlay(image, np.zeros((2, 2)), box=(1, 2, 3))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((2, 2)), alpha=2)
