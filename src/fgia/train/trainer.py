"""One trainer for every fgia model: AMP, channels_last, cosine schedule with warm-up, resume, DDP."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler

from fgia.config import save_yaml, to_dict
from fgia.data import build_transform, make_loader
from fgia.data.samples import FineGrainedDataset
from fgia.metrics import mean_per_class_accuracy, topk_accuracy
from fgia.models import create_model, save_model
from fgia.models.frozen import FrozenLowerTrunk
from fgia.models.output import ModelOutput
from fgia.models.spec import ExtractionSpec, model_spec
from fgia.progress import BatchProgress
from fgia.runtime import atomic_path, atomic_write_text, pick_device, seed_everything
from fgia.train.cache import trunk_cache
from fgia.train.config import TrainConfig
from fgia.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    make_sampler,
)
from fgia.train.losses import LossFn, build_loss

STATE_FILE = "trainer_state.pt"
# Options that may change between an interrupted run and its resumption without changing the result.
_RESUME_FREE = {"resume", "workers", "device", "out_dir", "val_every", "save_every", "cache_dir", "cache_budget_gb"}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class TrainResult:
    """What `fit` returns: the trained model (unwrapped, eval mode) and its per-epoch history."""

    model: nn.Module
    classes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_top1: float | None = None
    last_val_top1: float | None = None
    out_dir: Path | None = None


class TrainStep(nn.Module):
    """Model + loss in one module, so DDP synchronises a loss's own parameters (e.g. a margin classifier).

    With `cached`, the inputs are the model's cached lower-trunk maps and only its `forward_top` runs."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, cached: bool = False) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.cached = cached

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        output: ModelOutput = self.model.forward_top(images) if self.cached else self.model(images)
        return self.loss_fn(output, labels), output.logits


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """LR factor at iteration `step`: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def is_backbone_parameter(name: str) -> bool:
    """True for a parameter of a backbone's stages (pretrained when weights are given): fgia models keep them in
    a module called `trunk` or `stages` (CN-Nets heads own copies of the last stages); the rest is new layers."""
    return not {"trunk", "stages"}.isdisjoint(name.split("."))


def backbone_norm_layers(module: nn.Module) -> list[nn.Module]:
    """The backbone's BatchNorm layers (their running statistics are the pretrained ones)."""
    return [m for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and is_backbone_parameter(name)]


def parameter_groups(module: nn.Module, *, lr: float, weight_decay: float,
                     backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups: backbone parameters at `lr * backbone_lr_scale`, new layers at `lr`; biases and norm
    parameters (1-d) without weight decay."""
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        backbone, decay = is_backbone_parameter(name), param.ndim > 1
        group = groups.setdefault((backbone, decay), {
            "params": [], "lr": lr * (backbone_lr_scale if backbone else 1.0), "weight_decay": weight_decay * decay})
        group["params"].append(param)
    return list(groups.values())


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `TrainConfig.amp` on `device`, or None for full precision."""
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def normalisation(model: nn.Module, mean: tuple[float, ...] | None = None,
                  std: tuple[float, ...] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std: the given ones, else the model's pretrained statistics, else ImageNet's."""
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    mean = mean or getattr(model, "mean", None) or pretrained.get("mean") or _IMAGENET_MEAN
    std = std or getattr(model, "std", None) or pretrained.get("std") or _IMAGENET_STD
    return tuple(mean), tuple(std)


def _check_data(train: FineGrainedDataset, val: FineGrainedDataset | None) -> None:
    if len(train) == 0:
        raise ValueError(f"training set {train.name!r} is empty")
    for ds in (train, val) if val is not None else (train,):
        bad = [s.path for s in ds.samples if not 0 <= s.label < len(ds.classes)]
        if bad:
            raise ValueError(f"{ds.name!r}: {len(bad)} sample(s) are unlabelled or out of range, e.g. {bad[0]}")
    if val is not None and val.classes != train.classes:
        raise ValueError(f"validation set {val.name!r} has different classes from training set {train.name!r}")


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as plain lists (they cross ranks with all_gather_object and load with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def initial_model(cfg: TrainConfig, train: FineGrainedDataset) -> nn.Module:
    """The untrained model `fit` builds when given none (after `seed_everything(cfg.seed)`, the same weights)."""
    return create_model(cfg.model, num_classes=len(train.classes), **cfg.model_kwargs)


class _Trainer:
    """The state of one `fit` call; split out so each step of the loop reads on its own."""

    def __init__(self, cfg: TrainConfig, train: FineGrainedDataset, val: FineGrainedDataset | None,
                 progress: bool, model: nn.Module | None, loss_fn: LossFn | None,
                 sampler: Sampler[int] | None) -> None:
        self.cfg, self.train_set, self.val_set = cfg, train, val
        self.ctx: DistContext = init_distributed(cfg.device)
        self.show = progress and self.ctx.is_main
        self.console = Console(quiet=not self.show)
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = model if model is not None else initial_model(cfg, train)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.mean, self.std = normalisation(self.model, cfg.mean, cfg.std)
        self.model.spec = model_spec(self.model, image_size=cfg.image_size, mean=self.mean, std=self.std)
        cached = cfg.cache_trunk and isinstance(self.model, FrozenLowerTrunk) and self.model.frozen_stages > 0
        self.step = TrainStep(self.model, loss_fn or build_loss(cfg, self.model), cached=cached)
        self.step.to(self.ctx.device, memory_format=self.memory_format)
        if cached:
            cache = trunk_cache(self.model.lower_trunk(), train.samples, image_size=cfg.image_size, mean=self.mean,
                                std=self.std, views=cfg.cache_views, cache_dir=cfg.cache_dir,
                                budget_gb=cfg.cache_budget_gb, device=self.ctx.device, batch_size=cfg.batch_size,
                                workers=cfg.workers, progress=self.show)
            dataset = cache.dataset(train.samples)
            labels = dataset.labels
        else:
            dataset, labels = None, train.labels

        if sampler is not None and not hasattr(sampler, "set_epoch"):
            raise TypeError(f"{type(sampler).__name__} has no set_epoch(epoch); fit needs it to reshuffle each "
                            "epoch reproducibly (and to resume)")
        if sampler is None:
            sampler = make_sampler(labels, self.ctx, balanced=cfg.balanced_sampling, seed=cfg.seed,
                                   batch_size=cfg.batch_size, pk_images=cfg.pk_images)
        self.sampler = sampler
        if len(self.sampler) < cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(self.sampler)} training images each of "
                             f"the {self.ctx.world_size} process(es) gets; lower batch_size")
        if dataset is not None:
            self.loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True)
        else:
            self.loader = make_loader(train.samples, build_transform(True, cfg.image_size, self.mean, self.std),
                                      batch_size=cfg.batch_size, shuffle=False, workers=cfg.workers,
                                      sampler=self.sampler, drop_last=True)
        self.optimizer = create_optimizer_v2(
            self.step, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
            param_group_fn=partial(parameter_groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   backbone_lr_scale=cfg.backbone_lr_scale))
        steps = len(self.loader)
        self.scheduler = LambdaLR(self.optimizer, partial(
            warmup_cosine, warmup=round(cfg.warmup_epochs * steps), total=cfg.epochs * steps))
        self.amp_dtype = amp_dtype(cfg.amp, self.ctx.device)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.amp_dtype is torch.float16)
        self.forward = self.step
        if self.ctx.distributed:
            self.forward = DistributedDataParallel(
                self.step, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                find_unused_parameters=cfg.ddp_find_unused_parameters)
        seed_everything(cfg.seed + self.ctx.rank)  # each rank its own augmentation stream
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "epoch": epoch, "config": to_dict(self.cfg), "world_size": self.ctx.world_size,
            "step": self.step.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "history": self.history, "rng": rng_states,
        }

    def save(self, epoch: int) -> None:
        """Write the model, config, history and resumable state into `out_dir` (rank 0; every file atomic)."""
        rng_states = gather_objects(self.ctx, _rng_state())
        if self.ctx.is_main:
            out = Path(self.cfg.out_dir)
            save_model(self.model, out, self.train_set.classes, {"train_config": to_dict(self.cfg)})
            save_yaml(self.cfg, out / "train_config.yaml")
            atomic_write_text(out / "history.json", json.dumps(self.history, indent=1))
            # Written last and self-contained (weights included): a crash mid-save resumes from the previous one.
            with atomic_path(out / STATE_FILE) as tmp:
                torch.save(self._state(epoch, rng_states), tmp)
        barrier(self.ctx)

    def restore(self) -> None:
        """Continue from `out_dir/trainer_state.pt` after checking it was written by a compatible run."""
        path = Path(self.cfg.out_dir) / STATE_FILE
        if not path.exists():
            self.console.print(f"[yellow]resume: no {path}, starting from scratch")
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, now = state["config"], to_dict(self.cfg)
        changed = sorted(k for k in now.keys() - _RESUME_FREE if saved.get(k) != now[k])
        if changed:
            raise ValueError(f"cannot resume from {path}: options changed since it was written: {', '.join(changed)}")
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(f"cannot resume from {path}: written by {state['world_size']} process(es), now "
                             f"{self.ctx.world_size}; the schedule and data order depend on it")
        self.step.load_state_dict(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = state["history"]
        self.start_epoch = state["epoch"]
        _set_rng_state(state["rng"][self.ctx.rank])
        self.console.print(f"resumed from {path} after epoch {self.start_epoch}")

    # ------------------------------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, bar: BatchProgress) -> dict[str, float]:
        """One pass over the loader; loss and accuracy are averaged over every rank's images."""
        self.step.train()
        if self.cfg.freeze_backbone_bn:
            for module in backbone_norm_layers(self.step):
                module.eval()
        self.sampler.set_epoch(epoch)
        device, cfg = self.ctx.device, self.cfg
        task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(self.loader), loss=0.0, acc=0.0)
        loss_sum = correct = seen = 0.0
        classifies = False  # embedding-only models (metric losses, hash codes) have no top-1 to report
        start = time.perf_counter()
        for images, labels, _ in self.loader:
            images = images.to(device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                loss, logits = self.forward(images, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch + 1}; lower lr or use grad_clip")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.step.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.item() * len(labels)
            if logits is not None:
                classifies = True
                correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            bar.update(task, images=len(labels), loss=loss_sum / seen, acc=correct / seen)
        bar.remove_task(task)
        loss_sum, correct, seen = all_reduce_sum(self.ctx, [loss_sum, correct, seen])
        return {"loss": loss_sum / seen, "train_top1": correct / seen if classifies else None,
                "lr": max(self.scheduler.get_last_lr()),
                "seconds": time.perf_counter() - start}

    def check_in_sync(self) -> None:
        """Fail loudly if DDP let the ranks' parameters drift apart (they must be bit-identical)."""
        checksum = sum(p.detach().double().sum().item() for p in self.step.parameters())
        sums = gather_objects(self.ctx, checksum)
        if len(set(sums)) > 1:
            raise RuntimeError(f"DDP ranks diverged: parameter checksums {sums}")

    def run(self, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> TrainResult:
        cfg = self.cfg
        if cfg.resume:
            self.restore()
        with BatchProgress(self.console, enabled=self.show, numbers=("loss", "acc")) as bar:
            for epoch in range(self.start_epoch, cfg.epochs):
                record: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch, bar)}
                last = epoch + 1 == cfg.epochs
                if self.val_set is not None and self.ctx.is_main and ((epoch + 1) % cfg.val_every == 0 or last):
                    metrics = evaluate(self.model, self.val_set, batch_size=cfg.batch_size, workers=cfg.workers,
                                       device=self.ctx.device, amp=cfg.amp)
                    record.update({f"val_{k}": v for k, v in metrics.items() if k != "n"})
                self.history.append(record)
                self.console.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in record.items()))
                if cfg.out_dir is not None and ((epoch + 1) % cfg.save_every == 0 or last):
                    self.save(epoch + 1)
                if on_epoch_end is not None:
                    on_epoch_end(record)
        if self.ctx.distributed:
            self.check_in_sync()
        self.model.eval()
        val_top1 = [r["val_top1"] for r in self.history if "val_top1" in r]
        return TrainResult(model=self.model, classes=list(self.train_set.classes), history=self.history,
                           best_val_top1=max(val_top1) if val_top1 else None,
                           last_val_top1=val_top1[-1] if val_top1 else None,
                           out_dir=Path(cfg.out_dir) if cfg.out_dir is not None else None)


def fit(cfg: TrainConfig, train: FineGrainedDataset, val: FineGrainedDataset | None = None, progress: bool = True,
        *, model: nn.Module | None = None, loss_fn: LossFn | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        sampler: Sampler[int] | None = None) -> TrainResult:
    """Train `cfg.model` (or the given `model`) on `train`, evaluating on `val` every `cfg.val_every` epochs.

    Under `torchrun` (WORLD_SIZE > 1) every process calls `fit`; data are split across ranks and only rank 0
    evaluates, prints and writes `cfg.out_dir` (model via `save_model`, `train_config.yaml`, `history.json`,
    `trainer_state.pt`). `loss_fn` overrides the registered loss `cfg.loss`; `sampler` (with `set_epoch`,
    already split across ranks, e.g. a P x K sampler) replaces the shuffled / class-balanced one;
    `on_epoch_end(record)` is called after each epoch's record (and checkpoint) is complete.
    """
    _check_data(train, val)
    return _Trainer(cfg, train, val, progress, model, loss_fn, sampler).run(on_epoch_end)


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: FineGrainedDataset, spec: ExtractionSpec | None = None, *,
                   batch_size: int = 64, workers: int = 0, device: torch.device | str | None = None,
                   amp: str = "auto") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logits of every image, as {"": combined logits, head name: that head's logits}, and the labels; images are
    read as `spec` says (default: the model's own spec, i.e. the size it was trained at)."""
    device = pick_device("auto") if device is None else torch.device(device)
    spec = spec or model_spec(model)
    transform = build_transform(False, spec.image_size, spec.mean, spec.std)
    loader = make_loader(dataset.samples, transform, batch_size=batch_size, shuffle=False, workers=workers)
    dtype = amp_dtype(amp, device)
    was_training = model.training
    model.eval().to(device)
    parts: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    for images, y, _ in loader:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out: ModelOutput = model(images.to(device, memory_format=torch.channels_last))
        if out.logits is None:
            raise ValueError("the model returns no logits (an embedding model?); classification accuracy needs them")
        for name, logits in {"": out.logits, **out.head_logits}.items():
            parts.setdefault(name, []).append(logits.float().cpu())
        labels.append(y)
    model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}, torch.cat(labels).numpy()


def evaluate(model: nn.Module, dataset: FineGrainedDataset, spec: ExtractionSpec | None = None,
             **kwargs: Any) -> dict[str, float]:
    """Top-1, top-5 and mean per-class accuracy of `model` on `dataset` (and per head: "top1_conv", ...).

    `spec` and the keyword options are those of `predict_logits` (batch_size, workers, device, amp).
    """
    _check_data(dataset, None)
    logits, labels = predict_logits(model, dataset, spec, **kwargs)
    ks = (1, 5) if logits[""].shape[1] >= 5 else (1,)
    metrics: dict[str, float] = {"n": float(len(labels))}
    for head, scores in logits.items():
        suffix = f"_{head}" if head else ""
        metrics.update({f"{k}{suffix}": v for k, v in topk_accuracy(scores, labels, ks).items()})
        metrics[f"mean_per_class{suffix}"] = mean_per_class_accuracy(scores.argmax(1), labels)
    return metrics
