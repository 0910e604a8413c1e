"""One trainer for every fgia model (AMP, channels_last, cosine + warm-up, resume, DDP via torchrun)."""

from fgia.train.categories import (
    UNIFIED,
    categories_of,
    fit_category_model,
    fit_per_category,
)
from fgia.train.config import TrainConfig
from fgia.train.losses import LossFn, build_loss, list_losses, register_loss
from fgia.train.trainer import TrainResult, evaluate, fit, predict_logits

__all__ = [
    "UNIFIED", "LossFn", "TrainConfig", "TrainResult", "build_loss", "categories_of", "evaluate", "fit",
    "fit_category_model", "fit_per_category", "list_losses", "predict_logits", "register_loss",
]
