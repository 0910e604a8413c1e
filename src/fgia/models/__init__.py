"""Models: registry, timm/torchvision backbones and their weights, CN-Nets, the plain baseline, checkpoints."""

from fgia.models import cnnets, plain  # noqa: F401  (registers "cnnets" and "plain")
from fgia.models.backbones import Trunk, WeightsError, create_network, create_trunk
from fgia.models.checkpoint import load_model, save_model
from fgia.models.output import ModelOutput
from fgia.models.registry import create_model, list_models, register_model

__all__ = [
    "ModelOutput",
    "Trunk",
    "WeightsError",
    "create_model",
    "create_network",
    "create_trunk",
    "list_models",
    "load_model",
    "register_model",
    "save_model",
]
