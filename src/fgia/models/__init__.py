"""Models: registry, timm/torchvision backbones and their weights, CN-Nets, the plain baseline, checkpoints."""

# Importing the model modules registers their builders, so `create_model` / `load_model` know every name.
from fgia.models import attention, cnnets, encoders, fewshot, hashing, plain  # noqa: F401
from fgia.models.backbones import Trunk, WeightsError, create_network, create_trunk
from fgia.models.checkpoint import load_model, save_model
from fgia.models.output import ModelOutput
from fgia.models.registry import create_model, list_models, register_model
from fgia.models.spec import ExtractionSpec, model_spec

__all__ = [
    "ExtractionSpec",
    "ModelOutput",
    "Trunk",
    "WeightsError",
    "create_model",
    "create_network",
    "create_trunk",
    "list_models",
    "load_model",
    "model_spec",
    "register_model",
    "save_model",
]
