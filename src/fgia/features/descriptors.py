"""Classic retrieval descriptors over a conv feature map, registered by name, plus L2 / PCA-whitening / L2.

Each descriptor is a small `nn.Module` mapping a (B, C, H, W) feature map to (B, D). VLAD needs a codebook:
`fit_descriptor` learns it on auxiliary images. `extract_descriptors` runs a trunk (off-the-shelf or
fine-tuned) + descriptor over samples through `extract_features`; `fit_whitening` is the usual
L2 -> PCA-whitening -> L2 post-processing (`FeaturePCA`) fitted on the auxiliary set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import faiss
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from fgia.data.samples import Sample
from fgia.features.extract import FeatureSet, extract_features
from fgia.features.pca import FeaturePCA
from fgia.models.frozen import FrozenLowerTrunk
from fgia.models.output import ModelOutput
from fgia.models.spec import model_spec
from fgia.registry import Registry

DESCRIPTORS: Registry[Callable[..., nn.Module]] = Registry("descriptor")
_EPS = 1e-6


def register_descriptor(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a descriptor builder `fn(**kw) -> nn.Module` under `name`."""
    return DESCRIPTORS.register(name)


def create_descriptor(name: str, **kwargs) -> nn.Module:
    """Build a registered descriptor by name."""
    return DESCRIPTORS.get(name)(**kwargs)


def list_descriptors() -> list[str]:
    """Registered descriptor names, sorted."""
    return DESCRIPTORS.names()


def _check_map(x: Tensor) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"descriptors take a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
    return x


class MapDescriptor(nn.Module):
    """Base class: `out_dim(channels)` gives D; `needs_fit` tells whether `fit(maps)` must run first."""

    needs_fit = False

    def out_dim(self, channels: int) -> int:
        return channels


@register_descriptor("gap")
class GAP(MapDescriptor):
    """SPoC: global average pooling."""

    def forward(self, x: Tensor) -> Tensor:
        return _check_map(x).mean(dim=(2, 3))


@register_descriptor("mac")
class MAC(MapDescriptor):
    """MAC: global max pooling."""

    def forward(self, x: Tensor) -> Tensor:
        return _check_map(x).amax(dim=(2, 3))


@register_descriptor("gem")
class GeM(MapDescriptor):
    """Generalised mean pooling (p=1 is GAP, p->inf tends to MAC); `p` is trainable when `learn_p`."""

    def __init__(self, p: float = 3.0, learn_p: bool = False):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM needs p > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_map(x).clamp(min=_EPS)
        return x.pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """R-MAC regions (Tolias et al.) as (top, left, side) squares on an H x W map, coarse to fine.

    Level l uses squares of side floor(2 * min(H, W) / (l + 1)); l regions along the short side and
    l + extra along the long one, `extra` chosen so consecutive level-1 squares overlap by about `overlap`.
    """
    if height < 1 or width < 1 or levels < 1:
        raise ValueError(f"R-MAC needs a non-empty map and levels >= 1, got {height}x{width}, levels={levels}")
    short, long = min(height, width), max(height, width)
    extra = 0
    if long > short:
        steps = np.arange(2, 8)
        step_len = (long - short) / (steps - 1)
        extra = int(steps[np.argmin(np.abs(1 - step_len / short - overlap))]) - 1
    regions = []
    for level in range(1, levels + 1):
        side = max(1, math.floor(2 * short / (level + 1)))
        n_h = level + (extra if height > width else 0)
        n_w = level + (extra if width > height else 0)
        tops = np.floor(np.linspace(0, height - side, n_h)).astype(int) if n_h > 1 else [(height - side) // 2]
        lefts = np.floor(np.linspace(0, width - side, n_w)).astype(int) if n_w > 1 else [(width - side) // 2]
        regions += [(int(t), int(left), side) for t in tops for left in lefts]
    return regions


@register_descriptor("rmac")
class RMAC(MapDescriptor):
    """R-MAC: L2-normalised MAC of the whole map and of multi-scale square regions, summed."""

    def __init__(self, levels: int = 3, overlap: float = 0.4):
        super().__init__()
        self.levels, self.overlap = levels, overlap

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = _check_map(x).shape
        total = F.normalize(x.amax(dim=(2, 3)), dim=1)
        for top, left, side in rmac_regions(h, w, self.levels, self.overlap):
            total = total + F.normalize(x[:, :, top : top + side, left : left + side].amax(dim=(2, 3)), dim=1)
        return total


@register_descriptor("crow")
class CroW(MapDescriptor):
    """CroW (Kalantidis et al.): spatial weights from the normalised summed map, channel weights from sparsity."""

    def __init__(self, a: float = 2.0, b: float = 2.0):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        x = _check_map(x)
        s = x.sum(dim=1)  # (B, H, W)
        z = s.pow(self.a).sum(dim=(1, 2), keepdim=True).pow(1.0 / self.a)
        spatial = (s / z.clamp(min=_EPS)).pow(1.0 / self.b)
        pooled = (x * spatial.unsqueeze(1)).sum(dim=(2, 3))
        nonzero = (x > 0).float().mean(dim=(2, 3))  # (B, C)
        ratio = nonzero.sum(dim=1, keepdim=True) / nonzero.clamp(min=_EPS)
        channel = torch.where(nonzero > 0, torch.log(ratio), torch.zeros_like(ratio))
        return pooled * channel


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean (H, W) mask (all False when the mask is empty)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    return components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)


def scda_mask(x: Tensor) -> Tensor:
    """SCDA's selection mask (B, H, W): summed activations above their mean, largest connected component."""
    summed = _check_map(x).sum(dim=1)
    above = (summed > summed.mean(dim=(1, 2), keepdim=True)).cpu().numpy()
    # a constant map has nothing above its mean: keep every location rather than none
    masks = np.stack([largest_component(m) if m.any() else np.ones_like(m) for m in above])
    return torch.from_numpy(masks).to(x.device)


@register_descriptor("scda")
class SCDA(MapDescriptor):
    """SCDA (Wei et al.): average- and max-pooled descriptors inside the selection mask, concatenated (2C)."""

    def out_dim(self, channels: int) -> int:
        return 2 * channels

    def forward(self, x: Tensor) -> Tensor:
        mask = scda_mask(x).unsqueeze(1).to(x.dtype)  # (B, 1, H, W)
        avg = (x * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))
        mx = x.masked_fill(mask == 0, float("-inf")).amax(dim=(2, 3))
        return torch.cat([avg, mx], dim=1)


def local_descriptors(x: Tensor) -> Tensor:
    """The (B, H*W, C) L2-normalised local descriptors of a feature map."""
    return F.normalize(_check_map(x).flatten(2).transpose(1, 2), dim=2)


@register_descriptor("vlad")
class VLAD(MapDescriptor):
    """VLAD over conv local descriptors: residuals to a k-means codebook, intra-normalised, flattened (K*C)."""

    needs_fit = True

    def __init__(self, clusters: int = 16, seed: int = 0, max_points: int = 50_000):
        super().__init__()
        if clusters < 1:
            raise ValueError(f"VLAD needs at least one cluster, got {clusters}")
        self.clusters, self.seed, self.max_points = clusters, seed, max_points
        self.register_buffer("centers", torch.empty(0))

    def out_dim(self, channels: int) -> int:
        return self.clusters * channels

    def fit(self, maps: Tensor) -> VLAD:
        """Learn the codebook with faiss k-means on (a sample of) the maps' local descriptors."""
        points = local_descriptors(maps).reshape(-1, maps.shape[1]).detach().cpu().float().numpy()
        if len(points) < self.clusters:
            raise ValueError(f"VLAD: {len(points)} local descriptors cannot make {self.clusters} clusters")
        rng = np.random.default_rng(self.seed)
        if len(points) > self.max_points:
            points = points[rng.choice(len(points), self.max_points, replace=False)]
        kmeans = faiss.Kmeans(points.shape[1], self.clusters, niter=20, seed=self.seed, verbose=False)
        kmeans.train(np.ascontiguousarray(points))
        self.centers = torch.from_numpy(kmeans.centroids.copy())
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.centers.numel() == 0:
            raise RuntimeError("VLAD has no codebook: call fit(maps) on the auxiliary set first")
        if self.centers.shape[1] != x.shape[1]:
            raise ValueError(f"VLAD codebook has {self.centers.shape[1]} channels, the map has {x.shape[1]}")
        local = local_descriptors(x)  # (B, N, C)
        centers = self.centers.to(local)
        assign = F.one_hot(torch.cdist(local, centers[None]).argmin(dim=2), self.clusters).to(local)  # (B, N, K)
        residuals = assign.transpose(1, 2) @ local - assign.sum(dim=1).unsqueeze(2) * centers  # (B, K, C)
        return F.normalize(residuals, dim=2).flatten(1)


@register_descriptor("neural_codes")
class NeuralCodes(MapDescriptor):
    """'Neural codes': the network's penultimate layer, computed from the last conv map by `head`.

    `head` maps (B, C, H, W) to (B, `dim`), e.g. `PreLogits(timm_network)`; without one, the penultimate layer
    of a GAP-headed network (ResNet, EfficientNet) is the GAP of the map.
    """

    def __init__(self, head: nn.Module | None = None, dim: int | None = None):
        super().__init__()
        self.head, self.dim = head, dim

    def out_dim(self, channels: int) -> int:
        return self.dim or channels

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_check_map(x)) if self.head is not None else x.mean(dim=(2, 3))


class PreLogits(nn.Module):
    """A timm network's head up to (not including) the classifier: its `forward_head(x, pre_logits=True)`."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        return self.network.forward_head(x, pre_logits=True)


class DescriptorModel(FrozenLowerTrunk):
    """trunk -> descriptor as an fgia model (ModelOutput with `embedding` only), so `extract_features` runs it.

    `frozen_stages` names the trunk stages other models may share (`fgia.features.extract.TrunkGroup`): several
    descriptors on one trunk, or a fine-tuned model whose frozen stages are the same, cost one pass of them.
    """

    def __init__(self, trunk: nn.Module, descriptor: nn.Module, frozen_stages: int = 0):
        super().__init__()
        self.trunk, self.descriptor = trunk, descriptor
        self.frozen_stages = frozen_stages
        self.mean, self.std = trunk.mean, trunk.std
        self.embedding_dim = descriptor.out_dim(trunk.out_channels)

    def lower_trunk(self) -> nn.Sequential:
        return self.trunk.stages[: self.frozen_stages]

    def forward_top(self, lower: Tensor) -> ModelOutput:
        fmap = self.trunk.stages[self.frozen_stages :](lower)
        return ModelOutput(logits=None, embedding=self.descriptor(fmap.float()))


class _LocalSample(MapDescriptor):
    """`per_image` random locations of the map, flattened (B, per_image * C): samples for fitting a codebook."""

    def __init__(self, per_image: int, seed: int):
        super().__init__()
        self.per_image, self.generator = per_image, torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)  # (B, C, HW)
        picks = torch.randint(0, flat.shape[2], (x.shape[0], self.per_image), generator=self.generator)
        index = picks.to(x.device)[:, None, :].expand(-1, x.shape[1], -1)
        return torch.gather(flat, 2, index).transpose(1, 2).flatten(1)


def fit_descriptor(descriptor: nn.Module, trunk: nn.Module, samples: Sequence[Sample], per_image: int = 64,
                   seed: int = 0, image_size: int = 224, **extract_kwargs) -> nn.Module:
    """Fit a descriptor that needs it (VLAD's codebook) on `per_image` local descriptors of each auxiliary image
    read at `image_size`.

    `extract_kwargs` go to `extract_features` (batch_size, workers, device). Returns `descriptor`.
    """
    if not getattr(descriptor, "needs_fit", False):
        return descriptor
    sampler = DescriptorModel(trunk, _LocalSample(per_image, seed))
    spec = model_spec(sampler, image_size=image_size, regions=False)
    points = extract_features(sampler, samples, spec, **extract_kwargs).image
    descriptor.fit(torch.from_numpy(points).reshape(-1, trunk.out_channels, 1, 1))
    return descriptor


def extract_descriptors(trunk: nn.Module, descriptor: nn.Module, samples: Sequence[Sample], image_size: int = 224,
                        **extract_kwargs) -> FeatureSet:
    """Raw (N, D) descriptors of `samples` read at `image_size`: the trunk's last conv map -> `descriptor` (no
    post-processing).

    `extract_kwargs` go to `extract_features` (batch_size, workers, device, progress).
    """
    model = DescriptorModel(trunk, descriptor)
    return extract_features(model, samples, model_spec(model, image_size=image_size, regions=False), **extract_kwargs)


def fit_whitening(aux_features: np.ndarray, dim: int | None = None) -> FeaturePCA:
    """The usual post-processing, L2 -> PCA-whitening -> L2, fitted on auxiliary features.

    `dim` defaults to the feature dim; it is capped at N - 1 (the N-th whitened component would be noise).
    """
    n, d = np.shape(aux_features)
    if n < 2:
        raise ValueError(f"PCA-whitening needs at least 2 auxiliary features, got {n}")
    return FeaturePCA(min(dim or d, d, n - 1), whiten=True).fit(aux_features)
