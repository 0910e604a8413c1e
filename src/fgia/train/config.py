"""The trainer's configuration: one typed dataclass, saved next to every checkpoint as `train_config.yaml`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class TrainConfig:
    """How to train one fgia model.

    `model` / `model_kwargs` go to `fgia.models.create_model(model, num_classes=..., **model_kwargs)`.
    `optimizer` is any timm optimizer name ("sgd" = SGD with Nesterov momentum, "adamw", ...).
    `warmup_epochs` may be fractional; the schedule (linear warm-up, then cosine to 0) steps per iteration.
    `amp`: "auto" = bf16 on CUDA and off on CPU; "bf16", "fp16" (with a gradient scaler) or "off".
    `backbone_lr_scale`: the backbone's learning rate is `lr * backbone_lr_scale` (new layers get `lr`); below 1
    it keeps pretrained features while randomly initialised heads learn fast (see `is_backbone_parameter`).
    `freeze_backbone_bn`: keep the backbone's BatchNorm running statistics (eval mode) while training; small
    fine-grained sets with strong augmentation otherwise drag pretrained statistics away from test images.
    `loss` names a loss in `fgia.train.losses` (`register_loss`); `loss_kwargs` go to its factory.
    `mean`/`std`: input normalisation; None takes the model's own (its pretrained weights' statistics).
    `pk_images` > 0: P x K batches (metric learning): batch_size / pk_images classes, pk_images images each.
    `cache_trunk`: for a model with frozen stages (`model_kwargs` `frozen_stages`), train on their output computed
    once per image and view in `cache_views` (`fgia.train.cache`), kept in RAM, or in a memmap under `cache_dir`
    that later runs reuse; a cache over `cache_budget_gb` is refused. Off: every step runs the frozen stages.
    `resume`: continue from `out_dir/trainer_state.pt` when it exists (start fresh when it does not).
    """

    model: str = "cnnets"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 224
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    backbone_lr_scale: float = 1.0
    freeze_backbone_bn: bool = False
    label_smoothing: float = 0.0
    loss: str = "ce"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    balanced_sampling: bool = False
    pk_images: int = 0
    amp: str = "auto"
    channels_last: bool = True
    grad_clip: float = 0.0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    ddp_find_unused_parameters: bool = False
    cache_trunk: bool = True
    cache_views: tuple[str, ...] = ("resize", "hflip")
    cache_dir: Path | None = None
    cache_budget_gb: float = 4.0
    out_dir: Path | None = None
    resume: bool = False
    val_every: int = 1
    save_every: int = 1

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("epochs", "batch_size", "image_size", "val_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.backbone_lr_scale < 0:
            raise ValueError(f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")
        if self.pk_images:
            if self.balanced_sampling:
                raise ValueError("choose one of balanced_sampling and pk_images (P x K batches are balanced already)")
            if self.pk_images < 1 or self.batch_size % self.pk_images or self.batch_size // self.pk_images < 2:
                raise ValueError(f"pk_images={self.pk_images} must divide batch_size={self.batch_size} into >= 2 "
                                 "classes per batch")
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (where trainer_state.pt is)")
