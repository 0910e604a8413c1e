"""Bilinear and compact bilinear encoders: shapes, normalisation, and the kernel approximation."""

from __future__ import annotations

import pytest
import torch

from fgia.models import load_model, save_model
from fgia.models.encoders import BilinearPool, CompactBilinearPool, signed_sqrt_l2
from fgia.models.output import ModelOutput
from fgia.models.registry import create_model


def test_bilinear_pool_is_mean_outer_product_then_signed_sqrt_l2():
    x = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, C=2, 1, 2): locations (1, 3) and (-2, 0)
    raw = BilinearPool(2, normalize=False)(x)
    expected = (torch.tensor([[1.0, 3.0], [3.0, 9.0]]) + torch.tensor([[4.0, 0.0], [0.0, 0.0]])) / 2
    assert torch.allclose(raw, expected.flatten()[None])
    normed = BilinearPool(2)(x)
    signed_sqrt = torch.tensor([2.5, 1.5, 1.5, 4.5]).sqrt()
    assert torch.allclose(normed[0], signed_sqrt / signed_sqrt.norm())


def test_signed_sqrt_keeps_sign_and_unit_norm():
    out = signed_sqrt_l2(torch.tensor([[4.0, -9.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[2.0, -3.0, 0.0]]) / 13**0.5)


@pytest.mark.parametrize("method", ["tensor_sketch", "random_maclaurin"])
def test_compact_bilinear_approximates_bilinear_kernel(method):
    torch.manual_seed(0)
    pool = CompactBilinearPool(16, dim=4096, method=method, normalize=False, seed=1)
    # pairs from unrelated (kernel ~ 0) to identical (kernel = ||x||^4), so the target spans [0, 1]
    x = torch.randn(40, 16, 1, 1)
    mix = torch.linspace(0, 1, 40).view(-1, 1, 1, 1)
    y = mix * x + (1 - mix) * torch.randn(40, 16, 1, 1)
    scale = (x.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1)) ** 2
    approx = (pool(x) * pool(y)).sum(dim=1) / scale
    exact = (x.flatten(1) * y.flatten(1)).sum(dim=1) ** 2 / scale
    assert exact.mean() > 0.3  # a non-trivial target: an all-zero sketch would be off by that much
    assert (approx - exact).abs().mean() < 0.05  # error O(1/sqrt(d)) relative to ||x||^2 ||y||^2
    assert torch.corrcoef(torch.stack([approx, exact]))[0, 1] > 0.98


def test_compact_bilinear_matches_bilinear_inner_products_over_locations():
    torch.manual_seed(0)
    x, y = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3)
    exact = (BilinearPool(8, normalize=False)(x) * BilinearPool(8, normalize=False)(y)).sum()
    pool = CompactBilinearPool(8, dim=8192, normalize=False)
    approx = (pool(x) * pool(y)).sum()
    norm = BilinearPool(8, normalize=False)(x).norm() * BilinearPool(8, normalize=False)(y).norm()
    assert abs(approx - exact) / norm < 0.1


def test_compact_bilinear_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown compact bilinear method"):
        CompactBilinearPool(8, method="fft")
    with pytest.raises(ValueError, match="dim >= 1"):
        CompactBilinearPool(8, dim=0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        CompactBilinearPool(8, dim=16)(torch.rand(2, 8))


def test_compact_projections_are_seeded():
    a, b = CompactBilinearPool(8, dim=32, seed=3), CompactBilinearPool(8, dim=32, seed=3)
    x = torch.rand(2, 8, 2, 2)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), CompactBilinearPool(8, dim=32, seed=4)(x))


@pytest.mark.parametrize(
    ("name", "kwargs", "dim"),
    [
        ("bilinear", {"reduce_dim": 8}, 64),
        ("compact_bilinear", {"method": "tensor_sketch", "dim": 128}, 128),
        ("compact_bilinear", {"method": "random_maclaurin", "dim": 96, "reduce_dim": 16}, 96),
    ],
)
def test_registered_encoders_forward_and_backward(name, kwargs, dim):
    model = create_model(name, num_classes=5, backbone="resnet18", **kwargs)
    images = torch.rand(2, 3, 64, 64)
    out = model(images)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 5) and out.embedding.shape == (2, dim) and model.embedding_dim == dim
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(2), atol=1e-4)
    out.logits.sum().backward()
    assert model.classifier.weight.grad is not None


def test_encoder_checkpoint_round_trip(tmp_path):
    model = create_model("compact_bilinear", num_classes=2, backbone="resnet18", dim=64, reduce_dim=8, seed=5).eval()
    save_model(model, tmp_path, ["x", "y"])
    loaded, _ = load_model(tmp_path)
    images = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded(images).embedding, model(images).embedding, atol=1e-5)


def test_pooling_runs_in_float32_under_bf16_autocast():
    model = create_model("compact_bilinear", num_classes=2, backbone="resnet18", dim=32).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.embedding.dtype == torch.float32 and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", ["bilinear", "compact_bilinear"])
def test_frozen_stages_split_the_forward_and_stay_fixed(name):
    model = create_model(name, num_classes=3, backbone="resnet18", reduce_dim=8, frozen_stages=3,
                         **({"dim": 32} if name == "compact_bilinear" else {}))
    assert model.config["frozen_stages"] == 3 and len(model.lower_trunk()) == 3
    assert not any(p.requires_grad for p in model.lower_trunk().parameters())
    assert all(p.requires_grad for p in model.trunk.stages[3:].parameters())
    model.train()
    assert not any(m.training for i in range(3) for m in model.trunk.stages[i].modules())
    assert model.trunk.stages[3].training
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(images)
        split = model.forward_top(model.lower_trunk()(images))
    assert torch.allclose(whole.logits, split.logits) and torch.allclose(whole.embedding, split.embedding)
    with pytest.raises(ValueError, match="frozen_stages must be in"):
        create_model(name, num_classes=3, backbone="resnet18", frozen_stages=5)
