"""Feature extraction end to end: region boxes in original pixels, region crops, skipping, query path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from fgia.data.images import load_image
from fgia.data.samples import Sample
from fgia.data.transforms import build_transform
from fgia.features.extract import (
    ResizeWithOriginalSize,
    TrunkGroup,
    crop_regions,
    extract_features,
    extract_from_images,
    extract_models,
    group_spec,
    normalize,
    prepare_model,
)
from fgia.models import ExtractionSpec, ModelOutput, create_model, model_spec


class MeanColour(nn.Module):
    """Embedding = mean colour of the input; class 0's map = brightness on an 8x8 grid (class 1: its negative)."""

    mean, std, embedding_dim = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 3

    def __init__(self, with_maps: bool = True):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(3))
        self.with_maps = with_maps

    def forward(self, x):
        bright = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), 8)
        maps = torch.cat([bright, -bright], 1)
        return ModelOutput(
            logits=maps.mean((2, 3)), embedding=x.mean((2, 3)) + self.offset, maps=maps if self.with_maps else None
        )


@pytest.fixture
def images(tmp_path):
    """A 100x50 black image with a red square at x 50-75, y 0-25; a 40x80 one with it at x 0-20, y 40-80."""
    wide = Image.new("RGB", (100, 50))
    wide.paste((255, 0, 0), (50, 0, 75, 25))
    tall = Image.new("RGB", (40, 80))
    tall.paste((255, 0, 0), (0, 40, 20, 80))
    wide.save(tmp_path / "wide.png")
    tall.save(tmp_path / "tall.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    return [Sample(tmp_path / name, 0) for name in ("wide.png", "broken.jpg", "tall.png")]


def test_region_boxes_map_back_to_original_pixels(images):
    spec = ExtractionSpec(image_size=64, mean=(0, 0, 0), std=(1, 1, 1))
    fs = extract_features(MeanColour(), images, spec, batch_size=2, workers=0, device="cpu")
    assert fs.skipped == 1 and fs.index.tolist() == [0, 2]
    np.testing.assert_allclose(fs.boxes, [[50, 0, 75, 25], [0, 40, 20, 80]], atol=0.5)
    assert fs.predicted.tolist() == [0, 0]
    # whole image: mostly black; the region crop is the red square itself
    np.testing.assert_allclose(fs.image[0], [0.125, 0, 0], atol=0.02)
    np.testing.assert_allclose(fs.region, [[1, 0, 0], [1, 0, 0]], atol=0.05)


def test_query_path_matches_dataset_path(images):
    model = MeanColour()
    spec = model_spec(model, image_size=64)
    fs = extract_features(model, images, spec, workers=0, device="cpu")
    query = extract_from_images(model, [Image.open(images[2].path)], spec, device="cpu")
    np.testing.assert_allclose(query.image[0], fs.image[1], atol=1e-6)
    np.testing.assert_allclose(query.boxes[0], fs.boxes[1], atol=1e-4)
    assert query.maps.shape == (1, 8, 8)


def test_models_without_maps_extract_without_regions_only(images):
    model = MeanColour(with_maps=False)
    with pytest.raises(ValueError, match="no class-confidence maps"):
        extract_features(model, images, model_spec(model, image_size=64), workers=0, device="cpu")
    fs = extract_features(model, images, model_spec(model, image_size=64, regions=False), workers=0, device="cpu")
    assert fs.region is None and fs.boxes is None and fs.image.shape == (2, 3)
    with pytest.raises(ValueError, match="no samples"):
        extract_features(model, [])


def test_cnnets_with_a_worker_process(images):
    model = create_model("cnnets", num_classes=3, backbone="test_resnet", head_layers=1, head_dim=8).train()
    fs = extract_features(model, images, model_spec(model, image_size=64), batch_size=4, workers=1, device="auto")
    assert fs.image.shape == fs.region.shape == (2, 16)
    assert fs.image.dtype == np.float32 and np.isfinite(fs.region).all()
    assert ((fs.boxes[:, 2:] > fs.boxes[:, :2]).all()) and (fs.boxes[0, 2:] <= [100, 50]).all()
    assert not model.training  # extraction runs in eval mode (BatchNorm statistics untouched)


def test_device_side_normalisation_matches_the_eval_transform(images):
    image = load_image(images[0].path)
    out = ResizeWithOriginalSize(48, zoom_size=96)(image)
    resized, size = out["image"], out["size"]
    assert resized.dtype == torch.uint8 and size.tolist() == [100, 50] and out["zoomed"].shape == (3, 96, 96)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    expected = build_transform(False, 48, mean, std, crop_pct=None)(image)
    torch.testing.assert_close(normalize(resized[None], mean, std)[0], expected, atol=1e-5, rtol=1e-5)


class Detail(MeanColour):
    """MeanColour's maps; embedding = horizontal detail (mean |x - right neighbour|) and the input width."""

    embedding_dim = 2

    def forward(self, x):
        out = super().forward(x)
        detail = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
        out.embedding = torch.stack([detail, torch.full_like(detail, x.shape[-1])], 1)
        return out


def test_region_zoom_crops_regions_from_a_sharper_image(tmp_path):
    """400x200 black image, 4-px red/black stripes at x 200-300, y 0-100: blurred away at 64 px, seen at 4x."""
    image = Image.new("RGB", (400, 200))
    for x in range(200, 300, 8):
        image.paste((255, 0, 0), (x, 0, x + 4, 100))
    image.save(tmp_path / "stripes.png")
    samples = [Sample(tmp_path / "stripes.png", 0)]
    plain, zoomed = (extract_features(Detail(), samples, model_spec(Detail(), image_size=64, region_zoom=z), workers=0,
                                      device="cpu") for z in (1.0, 4.0))
    assert plain.image[0, 1] == zoomed.image[0, 1] == zoomed.region[0, 1] == 64  # the model always sees 64 px
    np.testing.assert_allclose(zoomed.boxes, plain.boxes, atol=2.0)
    np.testing.assert_allclose(plain.boxes[0], [200, 0, 300, 100], atol=8.0)
    assert zoomed.region[0, 0] > 3 * plain.region[0, 0]
    with pytest.raises(ValueError, match="region_zoom"):
        model_spec(Detail(), image_size=64, region_zoom=0.5)


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_models_sharing_frozen_stages_run_them_once_per_batch(images):
    torch.manual_seed(0)
    unified = create_model("cnnets", num_classes=3, backbone="test_resnet", head="cosine", frozen_stages=None)
    category = unified.restricted_to([0, 2])  # a copy: equal frozen weights, its own top
    other = create_model("plain", num_classes=2, backbone="test_resnet", frozen_stages=2)  # other weights
    group = TrunkGroup({"unified": unified, "category": category, "other": other})
    assert group.groups == [["unified", "category"], ["other"]]
    calls = {name: _count_calls(m.trunk[0] if name != "other" else m.trunk.stages[0])
             for name, m in group.models.items()}
    feats = extract_models(group, images, group_spec(group, image_size=48), batch_size=4, workers=0, device="cpu")
    # one batch: the whole images, then the region crops, each through one lower trunk per group
    assert (calls["unified"][0], calls["category"][0], calls["other"][0]) == (2, 0, 2)
    for name, model in group.models.items():
        alone = extract_features(model, images, model_spec(model, image_size=48, regions=False), workers=0, device="cpu")
        np.testing.assert_allclose(feats[name].image, alone.image, atol=1e-5)
        assert feats[name].index.tolist() == [0, 2] and feats[name].skipped == 1
    # every model featurises the region found by `region_from` (the first model)
    np.testing.assert_allclose(feats["category"].boxes, feats["unified"].boxes)


class Centroid(MeanColour):
    """MeanColour's maps; embedding = the brightness-weighted mean column (mirrored: width - 1 - it)."""

    embedding_dim = 1

    def forward(self, x):
        out = super().forward(x)
        weight = x.mean(1).sum(1) + 1e-6  # (B, W)
        columns = torch.arange(x.shape[-1], dtype=x.dtype)
        out.embedding = ((weight * columns).sum(1) / weight.sum(1))[:, None]
        return out


def test_flip_averages_each_embedding_with_its_mirror_images(images):
    spec = model_spec(Centroid(), image_size=64, regions=False)
    plain = extract_features(Centroid(), images, spec, workers=0, device="cpu")
    flipped = extract_features(Centroid(), images, spec.with_(flip=True), workers=0, device="cpu")
    np.testing.assert_allclose(plain.image[0, 0], 0.625 * 64 - 0.5, atol=0.1)  # the red square: x 50-75 of 100
    np.testing.assert_allclose(flipped.image, 31.5, atol=1e-3)  # (63 - c + c) / 2, whatever the image


def test_models_expecting_different_inputs_are_not_extracted_together():
    trained_at_64 = MeanColour()
    trained_at_64.spec = model_spec(trained_at_64, image_size=64)
    with pytest.raises(ValueError, match="different inputs"):
        group_spec({"a": trained_at_64, "b": MeanColour()})  # the other one carries the default 224
    assert group_spec({"a": trained_at_64}).image_size == 64
    assert group_spec({"a": trained_at_64, "b": MeanColour()}, image_size=32).image_size == 32  # the caller's size
    other_norm = MeanColour()
    other_norm.spec = model_spec(other_norm, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="different inputs"):
        group_spec({"a": trained_at_64, "b": other_norm}, image_size=32)


def test_prepare_model_puts_the_model_back_in_eval_mode_every_time():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert prepare_model(model, "cpu") is model and not model.training
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.train()  # e.g. a fine-tuning step between two extractions
    prepare_model(model, "cpu")
    assert not model.training and not model[1].training


@pytest.mark.parametrize("zoomed", [True, False])
def test_region_crops_split_across_threads_equal_one_roi_align(zoomed):
    from torchvision.ops import roi_align

    spec = ExtractionSpec(image_size=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(5, 3, 32, 32, generator=generator) * 255).to(torch.uint8)
    source = pixels if zoomed else normalize(pixels, spec.mean, spec.std)
    boxes = np.array([[0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9], [0.5, 0.5, 1, 1], [0, 0.3, 0.4, 0.7], [0.25, 0, 0.75, 0.5]],
                     np.float32)
    rois = torch.cat([torch.arange(5.0)[:, None], torch.from_numpy(boxes * 32)], 1)
    expected = roi_align(pixels.float() / 255 if zoomed else source, rois, (16, 16), 1.0, 2, aligned=True)
    if zoomed:
        expected = (expected - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):  # one slice, and three slices of the five crops
            torch.set_num_threads(n)
            crops = crop_regions(source, boxes, 16, spec)
            assert crops.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(crops, expected, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)
