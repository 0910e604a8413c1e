"""Checkpoints: a directory with model.safetensors (weights) and model.yaml (how to rebuild and use them).

model.yaml holds the model's `config` (so `create_model(**config)` rebuilds the architecture), the class names,
its `ExtractionSpec` (input size, normalisation, region settings: `load_model` puts it on the model as `.spec`)
and any `extra` the caller saves with it (e.g. training config, PCA fingerprints).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch.nn as nn
import yaml

from fgia.models.registry import create_model
from fgia.models.spec import ExtractionSpec, model_spec
from fgia.runtime import atomic_path, atomic_write_text, pick_device

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.yaml"
FORMAT_VERSION = 1


def save_model(
    model: nn.Module, directory: str | os.PathLike, class_names: list[str], extra: dict[str, Any] | None = None,
    spec: ExtractionSpec | None = None,
) -> Path:
    """Write `model` to `directory` (weights, then model.yaml; each file atomically); returns the directory.
    `spec` defaults to the model's own (`model_spec`)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise TypeError(f"{type(model).__name__} has no `config` dict with a registered `name`; cannot save it")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} classes")
    directory = Path(directory)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        safetensors.torch.save_model(model, str(tmp))
    info = {
        "format": FORMAT_VERSION,
        "config": config,
        "class_names": list(class_names),
        "mean": list(getattr(model, "mean")),
        "std": list(getattr(model, "std")),
        "embedding_dim": getattr(model, "embedding_dim", None),
        "spec": (spec or model_spec(model)).to_dict(),
        "extra": extra or {},
    }
    atomic_write_text(directory / INFO_FILE, yaml.safe_dump(info, sort_keys=False))
    return directory


def load_model(directory: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in `directory`, load its weights, put it in eval mode on `device`.

    Returns (model, info) where info is model.yaml's content (config, class_names, mean, std, spec, extra); the
    model carries its `ExtractionSpec` as `model.spec`.
    """
    directory = Path(directory)
    weights, info_path = directory / WEIGHTS_FILE, directory / INFO_FILE
    for path in (info_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not an fgia model directory: {path.name} is missing")
    info = yaml.safe_load(info_path.read_text(encoding="utf-8")) or {}
    if info.get("format") != FORMAT_VERSION or not isinstance(info.get("config"), dict):
        raise ValueError(f"{info_path}: unsupported model file (format {info.get('format')!r})")
    model = create_model(**info["config"])
    try:
        safetensors.torch.load_model(model, str(weights), strict=True, device="cpu")
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the architecture in {INFO_FILE}: {err}") from err
    spec = info.get("spec")
    model.spec = ExtractionSpec.from_dict(spec) if spec else model_spec(model)
    info["spec"] = model.spec
    return model.to(pick_device(device)).eval(), info
