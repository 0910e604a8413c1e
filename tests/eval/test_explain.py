"""Explanations: map spreads checked by hand, the picture for a map model and a Grad-CAM one, the histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fgia.eval.explain import (
    explain,
    explain_spreads,
    grad_cam,
    map_spread,
    plot_spread_histogram,
    spread_histogram,
)
from fgia.models import create_model, save_model


def test_map_spread_by_hand():
    # class 1 has the highest average; its map is a single peak: after /max it is 0/1 with a quarter of ones
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0] = 0.1
    maps[0, 1, 0, 0] = 1.0
    spread = map_spread(maps, image_size=2).item()
    assert spread == pytest.approx(np.std([1, 0, 0, 0]))
    flat = torch.full((1, 2, 2, 2), 0.5)
    assert map_spread(flat, image_size=4).item() == pytest.approx(0.0)
    negative = -torch.ones(1, 1, 2, 2)  # no positive value: nothing stands out
    assert map_spread(negative, image_size=2).item() == 0.0


def test_spread_histogram_counts_and_picture(tmp_path):
    spreads = {"conv": np.array([0.05, 0.35, 0.55, 0.8]), "norm": np.array([0.05, 0.1, 0.15, 0.3])}
    hist = spread_histogram(spreads, bins=4)
    assert hist["bin_edges"] == [0.0, 0.2, 0.4, 0.6, 0.8]  # shared bins up to the largest spread
    assert hist["heads"]["conv"]["counts"] == [1, 1, 1, 1] and hist["heads"]["norm"]["counts"] == [3, 1, 0, 0]
    assert hist["heads"]["conv"]["mean"] == pytest.approx(0.4375) and hist["heads"]["norm"]["n"] == 4
    out = plot_spread_histogram(hist, tmp_path / "fig5.png", "test")
    assert Image.open(out).format == "PNG"


def _image(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(("name", "source"), [("plain", "class-confidence"), ("bilinear", "Grad-CAM")])
def test_explain_writes_the_panel(tmp_path, name, source):
    model = create_model(name, num_classes=3, backbone="test_efficientnet", **({"reduce_dim": 8} if name ==
                                                                               "bilinear" else {}))
    save_model(model, tmp_path / "model", ["a", "b", "c"])
    shown = explain(tmp_path / "model", _image(tmp_path / "x.png"), tmp_path / "out.png", image_size=64)
    assert source in shown["map"] and shown["class"] in {"a", "b", "c"} and 0 < shown["probability"] <= 1
    x1, y1, x2, y2 = shown["box"]
    assert 0 <= x1 < x2 <= 90 and 0 <= y1 < y2 <= 60  # in the original image's pixels
    panel = Image.open(tmp_path / "out.png")
    assert panel.format == "PNG" and panel.height == 320 + 24 and panel.width == 2 * 480 + 8


def test_grad_cam_follows_the_predicted_class_gradient():
    torch.manual_seed(0)
    model = create_model("compact_bilinear", num_classes=2, backbone="test_efficientnet", dim=16).eval()
    maps, logits = grad_cam(model, torch.rand(2, 3, 64, 64))
    assert maps.shape == (2, 2, 2) and (maps >= 0).all() and logits.shape == (2, 2)
    with pytest.raises(ValueError, match="Grad-CAM"):
        grad_cam(torch.nn.Identity(), torch.rand(1, 3, 8, 8))


def test_explain_spreads_of_cnnets_heads(tmp_path, tiny_synth):
    from fgia.data import read_dataset

    model = create_model("cnnets", num_classes=3, backbone="test_efficientnet", head_stages=1)
    save_model(model, tmp_path / "cn", ["a", "b", "c"])
    samples = read_dataset(tiny_synth).samples[:6]
    hist = explain_spreads(tmp_path / "cn", samples, tmp_path / "h.png", "t", image_size=96, bins=5)
    assert set(hist["heads"]) == {"conv", "norm"} and all(h["n"] == 6 for h in hist["heads"].values())
    assert (tmp_path / "h.png").is_file()
