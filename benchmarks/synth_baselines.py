"""Is the synthetic benchmark fine-grained? A global colour histogram vs a small CNN on its species.

Generates the default `SynthConfig` benchmark, then classifies the held-out (test split) images of its species
with (a) a 3-D RGB histogram + scikit-learn classifiers and (b) a timm resnet18 trained from scratch on the
train split. Writes JSON + Markdown to benchmarks/results/synth_baselines.{json,md}.

    python benchmarks/synth_baselines.py [--epochs 30] [--out /tmp/synth_bench]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from fgia.config import to_dict
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.runtime import atomic_write_text, pick_device, seed_everything

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class CNNConfig:
    """The small CNN of baseline (b)."""

    model: str = "resnet10t"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0


def load_split(manifest: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All images (N, H, W, 3 uint8) and class ids of one split of a synthetic manifest."""
    import csv

    with manifest.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and r["label"]]
    images = np.stack([np.asarray(Image.open(manifest.parent / r["path"]).convert("RGB")) for r in rows])
    return images, np.array([classes.index(r["label"]) for r in rows])


def colour_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Normalised 3-D RGB histograms (bins^3 per image) of whole images."""
    q = images.astype(np.int64) * bins // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hists = np.stack([np.bincount(c.ravel(), minlength=bins**3) for c in codes]).astype(np.float32)
    return hists / hists.sum(1, keepdims=True)


def histogram_baselines(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """Test accuracy of logistic regression and 1/5-NN on global colour histograms."""
    xtr, xte = colour_histograms(train[0]), colour_histograms(test[0])
    classifiers = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)),
        "knn1": KNeighborsClassifier(1),
        "knn5": KNeighborsClassifier(5),
    }
    return {name: float((clf.fit(xtr, train[1]).predict(xte) == test[1]).mean()) for name, clf in classifiers.items()}


def train_cnn(cfg: CNNConfig, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              num_classes: int) -> dict:
    """Train `cfg.model` from scratch on the train split; test accuracy and wall time."""
    seed_everything(cfg.seed)
    device = pick_device()
    model = timm.create_model(cfg.model, pretrained=False, num_classes=num_classes).to(device)
    augment = v2.Compose([v2.RandomResizedCrop(train[0].shape[1], scale=(0.6, 1.0), antialias=True),
                          v2.RandomHorizontalFlip()])

    def tensors(images: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25

    xtr, ytr = tensors(train[0]), torch.from_numpy(train[1])
    xte, yte = tensors(test[0]), torch.from_numpy(test[1])
    steps = cfg.epochs * -(-len(xtr) // cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(xtr)).split(cfg.batch_size):
            batch = torch.stack([augment(x) for x in xtr[idx]]).to(device)
            loss = torch.nn.functional.cross_entropy(model(batch), ytr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs:
            print(f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f} test accuracy "
                  f"{accuracy(model, xte, yte):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"accuracy": accuracy(model, xte, yte), "train_seconds": time.perf_counter() - start,
            "device": str(device)}


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` (put in eval mode) on preprocessed `images`."""
    model.eval()
    device = next(model.parameters()).device
    pred = torch.cat([model(b.to(device)).argmax(1).cpu() for b in images.split(256)])
    return float((pred == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fgia_synth_bench"))
    parser.add_argument("--epochs", type=int, default=CNNConfig.epochs)
    parser.add_argument("--difficulty", type=float, default=SynthConfig.difficulty)
    args = parser.parse_args()

    synth = SynthConfig(difficulty=args.difficulty)
    manifest = generate_benchmark(synth, args.out)
    from fgia.data.synthetic import CATEGORIES

    classes = [f"{c}/sp{s:02d}" for c in list(CATEGORIES)[: synth.categories] for s in range(synth.species_per_category)]
    train, test = load_split(manifest, "train", classes), load_split(manifest, "test", classes)
    hist = histogram_baselines(train, test)
    cnn_cfg = CNNConfig(epochs=args.epochs)
    cnn = train_cnn(cnn_cfg, train, test, len(classes))
    best_hist = max(hist.values())
    result = {"synth": to_dict(synth), "cnn_config": asdict(cnn_cfg), "train_images": len(train[1]),
              "test_images": len(test[1]), "classes": len(classes), "chance": 1 / len(classes),
              "histogram_accuracy": hist, "cnn": cnn, "histogram_over_cnn": best_hist / cnn["accuracy"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
