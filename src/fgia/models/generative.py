"""Class-conditional image generators of the CVAE-GAN family (Bao et al. 2017) and their plain baselines.

Four networks on square images in [-1, 1] (64 x 64, or any power of two >= 16, e.g. 128):

- `ConvEncoder`: image -> mean and log-variance of the latent z, and a class code (the encoder's guess of the
  image's class embedding, so images of classes the generator never saw can condition it);
- `ConvGenerator`: z + class code -> image (DCGAN-style transposed convolutions; the code is concatenated to z
  and sets the scale and shift of every BatchNorm);
- `ConvDiscriminator`: image -> real/fake logit and its last features (for feature matching); with
  `num_classes` it is a projection discriminator (the plain conditional GAN's);
- `ConvClassifier`: image -> class logits and its last features (the CVAE-GAN's category network C).

`GenerativeModel` holds the networks one `kind` needs: "cvaegan" (all four), "cgan" (generator + projection
discriminator) or "cvae" (encoder + generator). The generator and class codes are the same size in every kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.parametrizations import spectral_norm

KINDS = ("cvaegan", "cgan", "cvae")
_BASE = 4  # side of the smallest feature map


@dataclass
class GeneratorArch:
    """Shape of the networks: image side, base channel width, latent and class-code sizes."""

    image_size: int = 64
    width: int = 16
    latent_dim: int = 64
    code_dim: int = 32

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 16, got {self.image_size}")
        for name in ("width", "latent_dim", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def levels(self) -> int:
        """Stride-2 stages between the image and the 4 x 4 map."""
        return int(math.log2(self.image_size // _BASE))

    def channels(self, level: int) -> int:
        """Channels after downsampling stage `level` (0-based): width, 2 width, 4 width, ... capped at 8 width."""
        return self.width * min(2**level, 8)


def _down_stack(arch: GeneratorArch, norm: str) -> nn.Sequential:
    """Stride-2 4x4 convolutions from the image to a (C, 4, 4) map; norm "batch", "spectral" or "none"."""
    layers: list[nn.Module] = []
    cin = 3
    for level in range(arch.levels):
        cout = arch.channels(level)
        conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=norm != "batch" or level == 0)
        layers.append(spectral_norm(conv) if norm == "spectral" else conv)
        if norm == "batch" and level > 0:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        cin = cout
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def _flat_features(arch: GeneratorArch) -> int:
    return arch.channels(arch.levels - 1) * _BASE * _BASE


class ConvEncoder(nn.Module):
    """Image -> (mu, logvar) of q(z | x) and the predicted class code."""

    def __init__(self, arch: GeneratorArch) -> None:
        super().__init__()
        self.features = _down_stack(arch, "batch")
        self.head = nn.Linear(_flat_features(arch), 2 * arch.latent_dim + arch.code_dim)
        self.latent_dim = arch.latent_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.head(self.features(x))
        mu, logvar, code = out.split([self.latent_dim, self.latent_dim, out.shape[1] - 2 * self.latent_dim], 1)
        return mu, logvar.clamp(-10.0, 10.0), code


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are predicted from the class code (every layer sees the class)."""

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        gain, bias = self.affine(code)[:, :, None, None].chunk(2, 1)
        return self.norm(x) * (1 + gain) + bias


class ConvGenerator(nn.Module):
    """(z, class code) -> image in [-1, 1]: the code is concatenated to z and modulates every BatchNorm."""

    def __init__(self, arch: GeneratorArch) -> None:
        super().__init__()
        top = arch.channels(arch.levels - 1)
        self.project = nn.Sequential(nn.Linear(arch.latent_dim + arch.code_dim, top * _BASE * _BASE, bias=False),
                                     nn.Unflatten(1, (top, _BASE, _BASE)))
        self.norms = nn.ModuleList([ConditionalBatchNorm(top, arch.code_dim)])
        self.ups = nn.ModuleList()
        for level in reversed(range(arch.levels)):
            cin, cout = arch.channels(level), (arch.channels(level - 1) if level else 3)
            self.ups.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=level == 0))
            if level:
                self.norms.append(ConditionalBatchNorm(cout, arch.code_dim))

    def forward(self, z: Tensor, code: Tensor) -> Tensor:
        h = self.project(torch.cat([z, code], 1))
        for norm, up in zip(self.norms, self.ups):
            h = up(F.relu(norm(h, code)))
        return torch.tanh(h)


class ConvDiscriminator(nn.Module):
    """Image -> (real/fake logit, features); with `num_classes` a projection discriminator D(x, y)."""

    def __init__(self, arch: GeneratorArch, num_classes: int = 0) -> None:
        super().__init__()
        self.features = _down_stack(arch, "spectral")
        dim = _flat_features(arch)
        self.head = spectral_norm(nn.Linear(dim, 1))
        self.projection = spectral_norm(nn.Embedding(num_classes, dim)) if num_classes else None

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        logit = self.head(feats).squeeze(1)
        if self.projection is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs the labels")
            logit = logit + (self.projection(labels) * feats).sum(1)
        return logit, feats


class ConvClassifier(nn.Module):
    """Image -> (class logits, features): the category network C trained on real images."""

    def __init__(self, arch: GeneratorArch, num_classes: int) -> None:
        super().__init__()
        self.features = _down_stack(arch, "batch")
        self.head = nn.Linear(_flat_features(arch), num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        return self.head(feats), feats


class GenerativeModel(nn.Module):
    """The networks of one generator `kind` plus the learned class codes (one per training class)."""

    def __init__(self, kind: str, num_classes: int, arch: GeneratorArch | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown generator kind {kind!r}; choose from {', '.join(KINDS)}")
        if num_classes < 2:
            raise ValueError(f"a class-conditional generator needs >= 2 classes, got {num_classes}")
        self.kind, self.num_classes = kind, num_classes
        self.arch = arch = arch or GeneratorArch()
        self.class_codes = nn.Embedding(num_classes, arch.code_dim)
        nn.init.normal_(self.class_codes.weight, 0.0, 1.0)
        self.generator = ConvGenerator(arch)
        self.encoder = ConvEncoder(arch) if kind in ("cvaegan", "cvae") else None
        self.discriminator = ConvDiscriminator(arch, num_classes if kind == "cgan" else 0) \
            if kind in ("cvaegan", "cgan") else None
        self.classifier = ConvClassifier(arch, num_classes) if kind == "cvaegan" else None

    def generate(self, labels: Tensor, z: Tensor | None = None) -> Tensor:
        """Images of classes `labels` from latents `z` (default: drawn from the prior)."""
        return self.generate_from_codes(self.class_codes(labels), z)

    def generate_from_codes(self, codes: Tensor, z: Tensor | None = None) -> Tensor:
        """Images for explicit class codes (interpolated codes, or codes the encoder inferred)."""
        if z is None:
            z = torch.randn(len(codes), self.arch.latent_dim, device=codes.device)
        return self.generator(z, codes)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, logvar, class code) of images; only kinds with an encoder have it."""
        if self.encoder is None:
            raise ValueError(f"a {self.kind} generator has no encoder; use cvaegan or cvae")
        return self.encoder(images)

    def vary(self, images: Tensor, temperature: float = 1.0) -> Tensor:
        """New images conditioned on `images` through the encoder: their inferred class code and a latent drawn
        from q(z | x) with its spread scaled by `temperature`."""
        mu, logvar, code = self.encode(images)
        z = mu + temperature * torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.generator(z, code)
