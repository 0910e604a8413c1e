"""Shared pieces of the benchmarks that learn on the shared real datasets from one cached frozen lower trunk
(`fgia bench hashing`, `fgia bench fewshot`): the datasets, the measured CPU recipe, the trunk cache over every
image and embeddings computed from it.

The recipe is the one measured on the real composite (issue 11): EfficientNet-Lite0 ImageNet weights at 160 px,
every trunk stage but the last frozen and its output cached once per image and view (resize + mirror), AdamW at
5e-3 for new layers and 0.2x that for the last stage, weight decay 1e-4, label smoothing 0.1, batch 32, 3 epochs.
Its cosine-head CN-Nets (`head="cosine"`) is the learned real-valued embedding the other methods are compared with.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from fgia.data import read_dataset
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.features.descriptors import DescriptorModel, create_descriptor
from fgia.models import create_trunk
from fgia.runtime import atomic_write_text, pick_device, seed_everything
from fgia.train.cache import TrunkCache, trunk_cache
from fgia.train.config import TrainConfig
from fgia.train.trainer import normalisation

SHARED_DATASETS = ("cub100", "stanford_cars", "flowers102_partial")


@dataclass
class Recipe:
    """Backbone, input size, trunk cache and training settings shared by every learned model of a benchmark."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str | None = "efficientnet-lite0"
    image_size: int = 160
    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 5e-3
    backbone_lr_scale: float = 0.2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.3
    cache_views: tuple[str, ...] = ("resize", "hflip")
    cache_dir: Path | None = None
    cache_budget_gb: float = 4.0
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    train_options: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field

    def model_kwargs(self, **extra: Any) -> dict[str, Any]:
        """Backbone, weights and the frozen stages (every one but the last) for `create_model`."""
        return {"backbone": self.backbone, "weights": self.weights, "frozen_stages": None, **extra}

    def train_config(self, model: str, model_kwargs: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
        """The TrainConfig of `model` under this recipe (`overrides`: any other TrainConfig field)."""
        options = {
            "model": model, "model_kwargs": self.model_kwargs(**(model_kwargs or {})), "image_size": self.image_size,
            "epochs": self.epochs, "batch_size": self.batch_size, "optimizer": self.optimizer, "lr": self.lr,
            "backbone_lr_scale": self.backbone_lr_scale, "weight_decay": self.weight_decay,
            "label_smoothing": self.label_smoothing, "warmup_epochs": min(self.warmup_epochs, float(self.epochs)),
            "cache_views": self.cache_views, "cache_dir": self.cache_dir, "cache_budget_gb": self.cache_budget_gb,
            "device": self.device, "workers": self.workers, "seed": self.seed, **self.train_options, **overrides,
        }
        return TrainConfig(**options)

    def embedding_config(self, **overrides: Any) -> TrainConfig:
        """The learned real-valued embedding: CN-Nets with a cosine head on the last stage."""
        return self.train_config("cnnets", {"head": "cosine"}, **overrides)

    def offtheshelf(self) -> nn.Module:
        """The pretrained trunk's GAP as an fgia model (its embedding), every stage but the last shareable."""
        seed_everything(self.seed)  # random weights (weights=None) are the same in every call
        trunk = create_trunk(self.backbone, self.weights)
        return DescriptorModel(trunk, create_descriptor("gap"), frozen_stages=len(trunk.stages) - 1).eval()


def read_shared(root: str | os.PathLike, names: Sequence[str] = SHARED_DATASETS,
                max_images_per_class: int | None = None) -> dict[str, FineGrainedDataset]:
    """The shared datasets under `root` by folder name, each capped at its first `max_images_per_class` images per
    class (None: all)."""
    datasets = {}
    for name in names:
        ds = read_dataset(Path(root) / name)
        if max_images_per_class is not None:
            seen: dict[int, int] = {}

            def keep(s: Sample, seen: dict[int, int] = seen) -> bool:
                seen[s.label] = seen.get(s.label, 0) + 1
                return seen[s.label] <= max_images_per_class

            ds = ds.filter(keep)
        datasets[name] = ds
    return datasets


def shared_cache(recipe: Recipe, datasets: Mapping[str, FineGrainedDataset], progress: bool = False) -> TrunkCache:
    """The frozen lower trunk's output for every image of `datasets` (reused from `recipe.cache_dir` when there)."""
    model = recipe.offtheshelf()
    mean, std = normalisation(model)
    samples = [s for ds in datasets.values() for s in ds.samples]
    return trunk_cache(model.lower_trunk(), samples, image_size=recipe.image_size, mean=mean, std=std,
                       views=recipe.cache_views, cache_dir=recipe.cache_dir, budget_gb=recipe.cache_budget_gb,
                       device=pick_device(recipe.device), batch_size=64,
                       workers=recipe.workers, progress=progress)


def timed_shared_cache(recipe: Recipe, datasets: Mapping[str, FineGrainedDataset], progress: bool,
                       log: Callable[[str], None]) -> tuple[TrunkCache, float]:
    """`shared_cache` and the seconds it took, logged."""
    start = time.perf_counter()
    cache = shared_cache(recipe, datasets, progress=progress)
    seconds = time.perf_counter() - start
    log(f"trunk cache: {sum(len(d) for d in datasets.values())} images in {seconds:.0f} s")
    return cache, seconds


def run_shared_bench(shared: str | os.PathLike, cfg: Any, bench: Callable[..., dict[str, Any]],
                     markdown: Callable[[dict[str, Any]], str], results_dir: str | os.PathLike, name: str,
                     progress: bool) -> dict[str, Any]:
    """Run `bench(datasets, cfg, on_progress=..., progress=..., log=...)` on the shared datasets under `shared`
    (`cfg.datasets`, capped at `cfg.max_images_per_class`), writing `<name>_<device>.json` and `.md` into
    `results_dir` at every progress report (an interrupted run keeps what it measured); print the table."""
    out = Path(results_dir) / f"{name}_{pick_device(cfg.recipe.device).type}"

    def write(payload: dict[str, Any]) -> None:
        atomic_write_text(out.with_suffix(".json"), json.dumps(payload, indent=1))
        atomic_write_text(out.with_suffix(".md"), markdown(payload))

    payload = bench(read_shared(shared, cfg.datasets, cfg.max_images_per_class), cfg, on_progress=write,
                    progress=progress, log=lambda line: print(line, flush=True))
    print(markdown(payload), flush=True)
    return payload


def embed(cache: TrunkCache, model: nn.Module, ds: FineGrainedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings from the cached unmirrored view, labels) of the readable images of `ds`."""
    kept = [s for s in ds.samples if str(s.path) in cache.rows]
    device = next(model.parameters()).device
    return cache.embeddings(model, kept, device=device), np.array([s.label for s in kept], dtype=np.int64)


def epoch_logger(log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """An `on_epoch_end` callback for `fit` that logs the epoch's loss, accuracy and seconds."""

    def line(r: dict[str, Any]) -> None:
        top1 = "" if r["train_top1"] is None else f", train top-1 {r['train_top1']:.3f}"
        log(f"  epoch {r['epoch']}: loss {r['loss']:.3f}{top1}, {r['seconds']:.0f} s")

    return line


def machine() -> str:
    """CPU architecture, torch threads and accelerator, for the results header."""
    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {accelerator}"
