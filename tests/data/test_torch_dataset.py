"""Transforms, the torch dataset and the loader that skips unreadable images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fakes import write_image
from PIL import Image

from fgia.data import Sample, build_transform, make_loader


def test_eval_transform_shape_and_normalisation(tmp_path):
    im = Image.new("RGB", (80, 40), (255, 0, 128))
    out = build_transform(False, size=32)(im)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    assert torch.allclose(out[:, 16, 16], expected, atol=1e-4)
    lite = build_transform(False, size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=None)(im)
    assert lite.shape == (3, 32, 32) and lite.min() >= -1 and lite.max() <= 1
    assert lite[0, 0, 0].item() == pytest.approx(1.0)


def test_train_transform_is_random():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    t = build_transform(True, size=24)
    torch.manual_seed(0)
    a, b = t(im), t(im)
    assert a.shape == b.shape == (3, 24, 24)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="crop_pct"):
        build_transform(False, crop_pct=1.5)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_skips_broken_images_and_warns(tmp_path, caplog, workers):
    samples = [Sample(write_image(tmp_path / f"{i}.jpg", size=(16, 16)), label=i) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(b"corrupt")
    samples.insert(2, Sample(tmp_path / "bad.jpg", label=9))
    samples.append(Sample(tmp_path / "missing.jpg", label=9))
    loader = make_loader(samples, build_transform(False, size=8), batch_size=3, workers=workers)
    with caplog.at_level(logging.WARNING, logger="fgia.data.torch_dataset"):
        batches = list(loader)
    labels = torch.cat([b[1] for b in batches]).tolist()
    indices = torch.cat([b[2] for b in batches]).tolist()
    assert labels == [0, 1, 2, 3, 4]
    assert indices == [0, 1, 3, 4, 5]
    assert [len(b[1]) for b in batches] == [2, 3]  # the last batch held only the missing file: dropped
    assert batches[0][0].shape == (2, 3, 8, 8)
    assert len(loader.skipped) == 2 and "bad.jpg" in loader.skipped[0]
    assert "skipped 1 unreadable image(s)" in caplog.text
