"""Descriptors against hand-computed tiny feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgia.features.descriptors import (
    PreLogits,
    create_descriptor,
    extract_descriptors,
    fit_descriptor,
    fit_whitening,
    list_descriptors,
    rmac_regions,
    scda_mask,
)


def test_registry_lists_every_survey_descriptor_and_rejects_unknown():
    assert {"gap", "mac", "gem", "rmac", "crow", "scda", "vlad", "neural_codes"} <= set(list_descriptors())
    with pytest.raises(KeyError, match="unknown descriptor 'spoc'"):
        create_descriptor("spoc")


def test_gap_mac_on_known_map():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, -1.0], [4.0, 1.0]]]])  # (1, 2, 2, 2)
    assert torch.allclose(create_descriptor("gap")(x), torch.tensor([[3.0, 1.0]]))
    assert torch.allclose(create_descriptor("mac")(x), torch.tensor([[6.0, 4.0]]))


def test_gem_p1_is_gap_and_large_p_tends_to_mac():
    x = torch.rand(2, 5, 4, 3) + 0.1
    assert torch.allclose(create_descriptor("gem", p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(create_descriptor("gem", p=200.0)(x), x.amax(dim=(2, 3)), rtol=0.03)
    p3 = create_descriptor("gem")(x)
    assert torch.all(p3 > x.mean(dim=(2, 3))) and torch.all(p3 < x.amax(dim=(2, 3)))
    with pytest.raises(ValueError, match="p > 0"):
        create_descriptor("gem", p=0)


def test_descriptor_rejects_non_map_input():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        create_descriptor("mac")(torch.rand(2, 8))


def test_rmac_regions_square_map_hand_computed():
    # 6x6, 2 levels: level 1 one 6x6 square; level 2 side floor(12/3)=4 at offsets 0 and 2 in each direction
    assert rmac_regions(6, 6, levels=2) == [(0, 0, 6), (0, 0, 4), (0, 2, 4), (2, 0, 4), (2, 2, 4)]


def test_rmac_regions_wide_map_adds_columns_for_overlap():
    # 4x9: level-1 side 4; 3 columns step 2.5 -> overlap 1 - 2.5/4 = 0.375 (closest to 0.4 among 2..7 columns)
    # at floor(linspace(0, 5, 3)); level 2: side floor(8/3)=2, 2 rows x (2 + 2) columns.
    regions = rmac_regions(4, 9, levels=2)
    assert regions[:3] == [(0, 0, 4), (0, 2, 4), (0, 5, 4)]
    assert regions[3:] == [(t, left, 2) for t in (0, 2) for left in (0, 2, 4, 7)]


def test_rmac_sums_normalised_region_macs():
    x = torch.rand(1, 3, 6, 6)
    expected = F.normalize(x.amax(dim=(2, 3)), dim=1)
    for top, left, side in rmac_regions(6, 6, levels=2):
        expected += F.normalize(x[:, :, top : top + side, left : left + side].amax(dim=(2, 3)), dim=1)
    assert torch.allclose(create_descriptor("rmac", levels=2)(x), expected, atol=1e-6)


def test_crow_hand_computed():
    # channel 0 active at 2 of 4 positions, channel 1 at 1 of 4
    x = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]])
    s = np.array([[1.0, 0.0], [4.0, 0.0]])
    spatial = np.sqrt(s / np.sqrt((s**2).sum()))
    pooled = np.array([(x[0, c].numpy() * spatial).sum() for c in range(2)])
    q = np.array([0.5, 0.25])
    channel = np.log(q.sum() / q)
    got = create_descriptor("crow")(x)[0].numpy()
    assert np.allclose(got, pooled * channel, atol=1e-5)


def test_scda_mask_keeps_largest_component_above_mean():
    a = torch.zeros(1, 2, 6, 6)
    a[0, :, 0:3, 0:3] = 1.0  # 9-cell blob
    a[0, :, 5, 5] = 5.0  # brighter but a single cell
    mask = scda_mask(a)[0]
    assert mask[0:3, 0:3].all() and mask.sum() == 9 and not mask[5, 5]


def test_scda_pools_avg_and_max_inside_the_mask():
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0:2, 0:2] = torch.tensor([[2.0, 4.0], [6.0, 8.0]])
    x[0, 1, 0:2, 0:2] = 1.0
    x[0, 1, 3, 3] = 0.5  # outside the blob: below the mean of the summed map -> ignored
    got = create_descriptor("scda")(x)
    assert torch.allclose(got, torch.tensor([[5.0, 1.0, 8.0, 1.0]]))
    assert create_descriptor("scda").out_dim(2) == 4


def test_scda_on_a_flat_map_keeps_every_location():
    x = torch.ones(1, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]
    assert torch.allclose(create_descriptor("scda")(x), torch.tensor([[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]]))


def test_vlad_hand_computed_with_fixed_codebook():
    vlad = create_descriptor("vlad", clusters=2)
    vlad.centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[[[1.0, 3.0, 0.0]], [[0.0, 1.0, 2.0]]]])  # locals (1,0), (3,1)->norm, (0,1)
    locals_ = F.normalize(torch.tensor([[1.0, 0.0], [3.0, 1.0], [0.0, 1.0]]), dim=1)
    r0 = (locals_[0] - torch.tensor([1.0, 0.0])) + (locals_[1] - torch.tensor([1.0, 0.0]))
    r1 = locals_[2] - torch.tensor([0.0, 1.0])  # zero residual stays zero after normalising
    expected = torch.cat([F.normalize(r0, dim=0), r1])
    assert torch.allclose(vlad(x)[0], expected, atol=1e-6)


def test_vlad_fit_then_transform_and_errors():
    vlad = create_descriptor("vlad", clusters=4)
    maps = torch.rand(3, 8, 5, 5)
    with pytest.raises(RuntimeError, match="no codebook"):
        vlad(maps)
    vlad.fit(maps)
    out = vlad(maps)
    assert out.shape == (3, vlad.out_dim(8)) == (3, 32)
    with pytest.raises(ValueError, match="channels"):
        vlad(torch.rand(1, 6, 5, 5))
    with pytest.raises(ValueError, match="cannot make"):
        create_descriptor("vlad", clusters=100).fit(torch.rand(1, 8, 3, 3))


def test_neural_codes_uses_the_given_head():
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(2, 4, 3, 3)
    codes = create_descriptor("neural_codes", head=head, dim=3)
    assert torch.allclose(codes(x), head(x)) and codes.out_dim(4) == 3
    assert torch.allclose(create_descriptor("neural_codes")(x), x.mean(dim=(2, 3)))


def test_pre_logits_head_of_a_timm_network():
    import timm

    net = timm.create_model("resnet18", num_classes=5).eval()
    images = torch.rand(1, 3, 64, 64)
    codes = create_descriptor("neural_codes", head=PreLogits(net), dim=net.num_features)
    with torch.no_grad():
        got = codes(net.forward_features(images))
        assert torch.allclose(net.fc(got), net(images), atol=1e-5)  # exactly the classifier's input


def test_fit_whitening_l2_pca_whitening_l2():
    rng = np.random.default_rng(0)
    aux = rng.normal(size=(50, 6)) * np.array([10, 5, 1, 1, 0.1, 0.1])
    post = fit_whitening(aux, dim=3)
    out = post.transform(rng.normal(size=(7, 6)))
    assert out.shape == (7, 3) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    unit = aux / np.linalg.norm(aux, axis=1, keepdims=True)
    whitened = (unit - post.mean) @ post.components.T * post.scale
    assert np.allclose(np.cov(whitened.T), np.eye(3), atol=0.05)  # whitening made the aux covariance identity
    assert fit_whitening(aux[:4]).n_components == 3  # capped at N - 1
    with pytest.raises(ValueError, match="at least 2"):
        fit_whitening(aux[:1])


@pytest.fixture(scope="module")
def synth_samples(tiny_synth):
    from fgia.data import read_dataset

    return read_dataset(tiny_synth).samples[:12]


@pytest.fixture(scope="module")
def trunk():
    from fgia.models import create_trunk

    return create_trunk("resnet18").eval()


@pytest.mark.parametrize("name", ["gap", "gem", "rmac", "crow", "scda"])
def test_extract_descriptors_matches_direct_computation(name, synth_samples, trunk):
    descriptor = create_descriptor(name)
    feats = extract_descriptors(trunk, descriptor, synth_samples, image_size=64, batch_size=6, workers=0, device="cpu")
    assert feats.image.shape == (12, descriptor.out_dim(512)) and feats.skipped == 0
    # the same images through the trunk by hand give the same descriptors
    from fgia.data import build_transform, load_image

    transform = build_transform(False, 64, trunk.mean, trunk.std, crop_pct=None)
    batch = torch.stack([transform(load_image(s.path)) for s in synth_samples[:2]])
    with torch.no_grad():
        direct = descriptor(trunk(batch)).numpy()
    assert np.allclose(feats.image[:2], direct, atol=1e-4)


def test_vlad_fitted_on_trunk_local_descriptors(synth_samples, trunk):
    vlad = fit_descriptor(create_descriptor("vlad", clusters=4), trunk, synth_samples, per_image=8,
                          image_size=64, batch_size=6, workers=0, device="cpu")
    assert vlad.centers.shape == (4, 512)
    feats = extract_descriptors(trunk, vlad, synth_samples[:3], image_size=64, workers=0, device="cpu").image
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    gap = create_descriptor("gap")
    assert fit_descriptor(gap, trunk, []) is gap  # nothing to fit: returned as is, no extraction attempted
