"""A frozen lower trunk: the first `frozen_stages` stages of a model's trunk, fixed at their (pretrained) weights.

Their output does not change during training, so the trainer computes it once per image and view and trains only
the rest on the cached maps (`fgia.train.cache`). Every model that supports it keeps `frozen_stages`, returns
those stages from `lower_trunk()` and runs everything after them in `forward_top`, so that
`forward(x) == forward_top(lower_trunk()(x))`. The frozen stages stay in eval mode (their BatchNorm statistics
are the pretrained ones) whatever `train()` is called with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

from fgia.models.output import ModelOutput


class FrozenStages(nn.Module):
    """Mix-in for models whose first `frozen_stages` trunk stages stay at their (pretrained) weights: no gradient,
    eval mode. A model whose output cannot be computed from theirs (e.g. a second pass over an image crop) stops
    here; `FrozenLowerTrunk` adds the split that lets the trainer cache them."""

    frozen_stages: int = 0

    def lower_trunk(self) -> nn.Sequential:
        """The frozen stages (an empty Sequential when nothing is frozen)."""
        raise NotImplementedError

    def freeze_lower_trunk(self) -> None:
        """Fix the lower trunk's parameters (called once the model is built)."""
        for param in self.lower_trunk().parameters():
            param.requires_grad_(False)
        self.lower_trunk().eval()

    def train(self, mode: bool = True) -> FrozenStages:
        super().train(mode)
        self.lower_trunk().eval()
        return self


class FrozenLowerTrunk(FrozenStages):
    """Mix-in for models whose first `frozen_stages` trunk stages are frozen (see the module docstring)."""

    def forward_top(self, lower: Tensor) -> ModelOutput:
        """The model's output from the lower trunk's output."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> ModelOutput:
        return self.forward_top(self.lower_trunk()(x))


def check_frozen_stages(frozen_stages: int, shared_stages: int, model: str) -> None:
    """Frozen stages must be a prefix of the shared trunk (a sub-net's private stages are never frozen)."""
    if not 0 <= frozen_stages <= shared_stages:
        raise ValueError(f"{model}: frozen_stages must be in [0, {shared_stages}] (the shared trunk's stages), "
                         f"got {frozen_stages}")


def lower_and_top(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], ModelOutput]]:
    """(frozen lower trunk, the function computing the model's output from its output) of any model; a model
    without frozen stages is an identity trunk and its whole forward."""
    if isinstance(model, FrozenLowerTrunk) and model.frozen_stages:
        return model.lower_trunk(), model.forward_top
    return nn.Identity(), model


def module_digest(module: nn.Module) -> str:
    """A digest of a module's weights and buffers (names, dtypes, values): equal digests, interchangeable
    frozen trunks. Modules without state (identity trunks) share one digest."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]
