"""Is the synthetic benchmark fine-grained? A global colour histogram vs a small CNN on its species.

Generates a `SynthConfig` benchmark (the default one unless told), reads it back through fgia's manifest reader,
then classifies the held-out (test split) images of its species with (a) global 3-D RGB histograms +
scikit-learn classifiers and (b) a small CNN (fgia's `plain` model) trained on the train split with
`fgia.train.fit`. Writes JSON + Markdown to benchmarks/results/synth_baselines_<device>.{json,md}. Target (the issue:
the histogram must do far worse than the CNN): best histogram top-1 / CNN top-1 <= 0.5.

    python benchmarks/synth_baselines.py [--backbone tf_efficientnet_lite0 --weights efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fgia.config import to_dict
from fgia.data import FineGrainedDataset, load_image, read_dataset
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.results import target
from fgia.runtime import atomic_write_text
from fgia.train import TrainConfig, evaluate, fit

RESULTS = Path(__file__).resolve().parent / "results"


def colour_histograms(dataset: FineGrainedDataset, bins: int = 8) -> np.ndarray:
    """Normalised global 3-D RGB histograms (bins^3 values per image)."""
    hists = []
    for sample in dataset:
        q = np.asarray(load_image(sample.path), np.int64) * bins // 256
        codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        hists.append(np.bincount(codes.ravel(), minlength=bins**3))
    hists = np.stack(hists).astype(np.float32)
    return hists / hists.sum(1, keepdims=True)


def histogram_baselines(train: FineGrainedDataset, test: FineGrainedDataset) -> dict[str, float]:
    """Test accuracy of logistic regression and k-NN on global colour histograms."""
    xtr, xte = colour_histograms(train), colour_histograms(test)
    ytr, yte = np.array(train.labels), np.array(test.labels)
    classifiers = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)),
        "knn1": KNeighborsClassifier(1),
        "knn5": KNeighborsClassifier(5),
    }
    return {name: float((clf.fit(xtr, ytr).predict(xte) == yte).mean()) for name, clf in classifiers.items()}


def markdown(result: dict) -> str:
    synth, cnn = result["synth"], result["cnn"]
    hist = result["histogram_accuracy"]
    return "\n".join([
        "# Synthetic benchmark: global colour histogram vs small CNN",
        "",
        f"Benchmark: {synth['categories']} meta-categories x {synth['species_per_category']} species x "
        f"{synth['images_per_species']} images, {synth['image_size']} px, difficulty {synth['difficulty']}, "
        f"seed {synth['seed']}; {result['train_images']} train / {result['test_images']} test images, "
        f"{result['classes']} classes (chance {result['chance']:.3f}).",
        "",
        "| method | test top-1 |",
        "|---|---|",
        *(f"| colour histogram (8x8x8 RGB) + {name} | {acc:.3f} |" for name, acc in hist.items()),
        f"| CNN `plain`/{cnn['backbone']} ({cnn['weights'] or 'random init'}), {cnn['epochs']} epochs, "
        f"{cnn['train_seconds']:.0f} s on {cnn['device']} | {cnn['top1']:.3f} |",
        "",
        f"Best histogram / CNN = **{result['histogram_over_cnn']:.2f}** (target <= 0.5: "
        f"{'met' if result['targets']['histogram_over_cnn']['met'] else 'NOT met'}); {result['elapsed_s']:.0f} s in "
        f"all. Generation: {result['images_per_second']:.0f} images/s with {result['workers']} worker processes.",
        "",
        f"Command: `{result['command']}`",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fgia_synth_bench"), help="where to generate")
    parser.add_argument("--difficulty", type=float, default=SynthConfig.difficulty)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="efficientnet-lite0", help="backbone weights; 'none' = random init")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    started = time.perf_counter()

    synth = SynthConfig(difficulty=args.difficulty)
    workers = os.cpu_count() or 1
    start = time.perf_counter()
    dataset = read_dataset(generate_benchmark(synth, args.out, workers=workers))
    images_per_second = synth.num_images / (time.perf_counter() - start)
    train, test = dataset.split("train"), dataset.split("test")

    hist = histogram_baselines(train, test)
    weights = None if args.weights == "none" else args.weights
    train_cfg = TrainConfig(model="plain", model_kwargs={"backbone": args.backbone, "weights": weights},
                            image_size=synth.image_size, epochs=args.epochs, batch_size=32, lr=args.lr,
                            weight_decay=5e-5, workers=0)
    start = time.perf_counter()
    model = fit(train_cfg, train, progress=False, on_epoch_end=lambda r: print(r, flush=True)).model
    train_seconds = time.perf_counter() - start
    top1 = evaluate(model, test)["top1"]

    device = str(next(model.parameters()).device.type)
    histogram_over_cnn = max(hist.values()) / top1
    result = {
        "targets": {"histogram_over_cnn": target(round(histogram_over_cnn, 4), 0.5, "<=")},  # "far worse"
        "synth": to_dict(synth), "train_config": to_dict(train_cfg), "workers": workers,
        "images_per_second": images_per_second, "train_images": len(train), "test_images": len(test),
        "classes": len(dataset.classes), "chance": 1 / len(dataset.classes), "histogram_accuracy": hist,
        "cnn": {"backbone": args.backbone, "weights": weights, "epochs": args.epochs, "top1": top1,
                "train_seconds": train_seconds, "device": device},
        "histogram_over_cnn": histogram_over_cnn,
        "command": "python benchmarks/synth_baselines.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(RESULTS / f"synth_baselines_{device}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / f"synth_baselines_{device}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
