"""A timm-style model registry: `@register_model` builders, `create_model(name, ...)`, `list_models()`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a builder `fn(**kwargs) -> nn.Module` under `name` (default: the function name)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = builder
        return builder

    return wrap(fn) if fn is not None else wrap


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; unknown names list the close matches."""
    if name not in _MODELS:
        close = [m for m in _MODELS if name.split("_")[0] in m]
        hint = f" (did you mean: {', '.join(close)})" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}; see fgia.models.list_models()")
    return _MODELS[name](**kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style `pattern`, sorted."""
    return sorted(m for m in _MODELS if fnmatch.fnmatch(m, pattern))
