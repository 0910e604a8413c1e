"""The model registry (timm-style): `@register_model` builders, `create_model(name, ...)`, `list_models()`."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from fgia.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register
"""Register a builder `fn(**kwargs) -> nn.Module` under `name` (default: the function name)."""


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; unknown names list the close matches."""
    return MODELS.get(name)(**kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style `pattern`, sorted."""
    return MODELS.names(pattern)
