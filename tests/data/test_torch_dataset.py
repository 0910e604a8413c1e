"""Transforms, the torch dataset (bbox crop) and the loader that skips unreadable images."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fakes import write_image
from PIL import Image

from fgia.data import LITE_MEAN, LITE_STD, ImageDataset, Sample, TransformConfig, build_transform, make_loader


def test_eval_transform_shape_and_normalisation(tmp_path):
    im = Image.new("RGB", (80, 40), (255, 0, 128))
    out = build_transform(False, size=32)(im)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    assert torch.allclose(out[:, 16, 16], expected, atol=1e-4)
    lite = build_transform(False, size=32, mean=LITE_MEAN, std=LITE_STD, crop_pct=None)(im)
    assert lite.shape == (3, 32, 32) and lite.min() >= -1 and lite.max() <= 1
    assert lite[0, 0, 0].item() == pytest.approx(1.0)


def test_train_transform_is_random_and_config_builds_the_same():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    t = TransformConfig(size=24).build(train=True)
    torch.manual_seed(0)
    a, b = t(im), t(im)
    assert a.shape == b.shape == (3, 24, 24)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="crop_pct"):
        build_transform(False, crop_pct=1.5)


def test_dataset_crops_to_bbox_in_original_pixels(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (20, 0, 40, 20))  # right half red
    img.save(tmp_path / "a.png")
    s = Sample(tmp_path / "a.png", label=3, bbox=(20.0, 0.0, 40.0, 20.0))
    image, label, index = ImageDataset([s], crop_to_bbox=True)[0]
    assert image.size == (20, 20) and label == 3 and index == 0
    assert np.asarray(image)[..., 0].min() == 255  # only the red half remains
    # the box maps onto a reduced image too
    small, _, _ = ImageDataset([s], crop_to_bbox=True, max_pixels=200)[0]
    assert np.asarray(small)[..., 2].max() < 60 and small.width <= 10
    wide, _, _ = ImageDataset([s], crop_to_bbox=True, bbox_margin=0.5)[0]
    assert wide.size == (30, 20)  # margin clipped at the image border


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
