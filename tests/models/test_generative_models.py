"""Generator networks: shapes at 32/64/128 px, which networks each kind has, conditioning and readable errors."""

from __future__ import annotations

import pytest
import torch

from fgia.models.generative import GenerativeModel, GeneratorArch


@pytest.mark.parametrize("size", [32, 64, 128])
def test_cvaegan_networks_map_images_and_codes_at_each_size(size):
    torch.manual_seed(0)
    arch = GeneratorArch(image_size=size, width=4, latent_dim=8, code_dim=6)
    model = GenerativeModel("cvaegan", num_classes=3, arch=arch).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    mu, logvar, code = model.encode(x)
    assert mu.shape == logvar.shape == (2, 8) and code.shape == (2, 6)
    images = model.generate(torch.tensor([0, 2]))
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1  # tanh range, as the real images are scaled
    logit, feats = model.discriminator(x)
    assert logit.shape == (2,) and feats.shape[0] == 2
    logits, _ = model.classifier(x)
    assert logits.shape == (2, 3)
    assert model.vary(x).shape == x.shape


def test_each_kind_has_only_its_networks_and_the_same_generator():
    arch = GeneratorArch(width=4, latent_dim=8, code_dim=4)
    nets = {kind: GenerativeModel(kind, 5, arch) for kind in ("cvaegan", "cgan", "cvae")}
    present = {kind: tuple(getattr(m, n) is not None for n in ("encoder", "discriminator", "classifier"))
               for kind, m in nets.items()}
    assert present == {"cvaegan": (True, True, True), "cgan": (False, True, False), "cvae": (True, False, False)}
    sizes = {kind: sum(p.numel() for p in m.generator.parameters()) for kind, m in nets.items()}
    assert len(set(sizes.values())) == 1  # baselines are the same size where it matters: the generator


def test_class_code_conditions_the_output():
    torch.manual_seed(0)
    model = GenerativeModel("cvae", 4, GeneratorArch(width=4, latent_dim=8, code_dim=4)).eval()
    z = torch.randn(1, 8).repeat(2, 1)
    a, b = model.generate(torch.tensor([0, 1]), z)
    assert not torch.allclose(a, b)
    again = model.generate(torch.tensor([0]), z[:1])
    torch.testing.assert_close(again[0], a)


def test_projection_discriminator_uses_the_labels():
    torch.manual_seed(0)
    model = GenerativeModel("cgan", 3, GeneratorArch(width=4, latent_dim=8, code_dim=4)).eval()
    x = torch.rand(1, 3, 64, 64).repeat(2, 1, 1, 1)
    logits, _ = model.discriminator(x, torch.tensor([0, 2]))
    assert logits[0] != logits[1]
    with pytest.raises(ValueError, match="needs the labels"):
        model.discriminator(x)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        GeneratorArch(image_size=48)
    with pytest.raises(ValueError, match="width"):
        GeneratorArch(width=0)
    with pytest.raises(ValueError, match="unknown generator kind"):
        GenerativeModel("vqgan", 3)
    with pytest.raises(ValueError, match=">= 2 classes"):
        GenerativeModel("cvaegan", 1)
    with pytest.raises(ValueError, match="no encoder"):
        GenerativeModel("cgan", 3, GeneratorArch(width=4)).vary(torch.zeros(1, 3, 64, 64))
