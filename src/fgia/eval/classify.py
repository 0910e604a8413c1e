"""`fgia eval --task classify`: top-1, top-5 and mean per-class accuracy on a dataset's classification split."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch.nn as nn

from fgia.data import DatasetError, official_split, read_dataset
from fgia.data.samples import FineGrainedDataset
from fgia.models import load_model
from fgia.models.spec import model_spec
from fgia.train.trainer import evaluate


@dataclass
class ClassifyConfig:
    """Evaluation settings; `split` "official" takes the dataset's shipped test split, None the whole dataset;
    `image_size` None reads images as the model's spec says (the size it was trained at)."""

    split: str | None = "official"
    image_size: int | None = None
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"


def align_classes(dataset: FineGrainedDataset, class_names: list[str]) -> FineGrainedDataset:
    """`dataset` relabelled to a model's class order (by name); its classes must all be known to the model."""
    unknown = sorted(set(dataset.classes) - set(class_names))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise ValueError(f"{dataset.name}: {len(unknown)} class(es) the model was not trained on: {shown}")
    position = {name: i for i, name in enumerate(class_names)}
    remap = {old: position[name] for old, name in enumerate(dataset.classes)}
    samples = [replace(s, label=remap[s.label]) for s in dataset.samples if s.label >= 0]
    return FineGrainedDataset(dataset.name, dataset.root, list(class_names), samples)


def evaluate_classification(model: nn.Module, dataset: FineGrainedDataset, class_names: list[str] | None = None,
                            cfg: ClassifyConfig | None = None) -> dict[str, float]:
    """{"top1", "top5", "mean_per_class", "n"} (plus per-head values, e.g. "top1_crop") of `model` on `dataset`.

    `class_names` is the model's class order (from its checkpoint); without it the dataset's labels are taken
    to index the model's outputs directly. Unlabelled images are left out.
    """
    cfg = cfg or ClassifyConfig()
    if cfg.split == "official":
        dataset = official_split(dataset)[1]
    elif cfg.split is not None:
        dataset = dataset.split(cfg.split)
    if class_names is not None:
        dataset = align_classes(dataset, class_names)
    elif getattr(model, "num_classes", len(dataset.classes)) != len(dataset.classes):
        raise ValueError(f"the model has {model.num_classes} classes, {dataset.name} has {len(dataset.classes)}; "
                         "pass the model's class_names to align them")
    dataset = dataset.filter(lambda s: s.label >= 0)
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.name}: no labelled images to classify (split {cfg.split!r})")
    spec = model_spec(model, **({"image_size": cfg.image_size} if cfg.image_size else {}))
    return evaluate(model, dataset, spec, batch_size=cfg.batch_size, workers=cfg.workers,
                    device=cfg.device if cfg.device != "auto" else None)


def classify_checkpoint(model_dir: str | os.PathLike, data: str | os.PathLike, cfg: ClassifyConfig | None = None,
                        data_format: str = "auto") -> dict[str, float]:
    """Load a saved model and `evaluate_classification` it on the dataset at `data` (any readable layout)."""
    cfg = cfg or ClassifyConfig()
    model, info = load_model(model_dir, device=cfg.device)
    dataset = read_dataset(data, data_format)
    return evaluate_classification(model, dataset, info.get("class_names"), cfg)


def format_classification(metrics: dict[str, float]) -> str:
    """A Markdown table of the metrics, one row per head ("" = the fused logits)."""
    heads = [""] + sorted({k.split("_", 1)[1] for k in metrics if k.startswith("top1_")})
    columns = [c for c in ("top1", "top5", "mean_per_class") if c in metrics]
    lines = ["| head | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for head in heads:
        suffix = f"_{head}" if head else ""
        cells = [f"{metrics[c + suffix]:.4f}" if c + suffix in metrics else "" for c in columns]
        lines.append(f"| {head or 'all'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{int(metrics['n'])} images\n"
