"""Conv-Net vs Norm-Net vs CN-Nets vs the plain baseline, and how many stages the heads share (Table 2).

On the default synthetic benchmark (`fgia.data.synthetic.SynthConfig()`), the OSFGIR auxiliary species (half of
each meta-category, `build_osfgir_split`, seed 0) are trained on their train split with one backbone, schedule
and seed for every model, then measured on:
- held-out images of the auxiliary species (their test split): top-1 of the Conv-Net head alone, the Norm-Net
  head alone, CN-Nets (mean of both heads' scores) and the plain baseline (GAP + linear);
- retrieval mAP (Euclidean, leave-one-out) of each head's feature, their concatenation (each L2-normalised)
  and the plain GAP feature, on the held-out images of the auxiliary species and on all images of the
  *unseen* species (the OSFGIR setting);
- the shared-depth sweep: CN-Nets whose heads own the last 0, 1, 2 backbone stages: accuracy and
  extraction time (ms/image, whole-image features, CPU).

    python benchmarks/heads.py [--data DIR] [--epochs 8] [--backbone tf_efficientnet_lite0] ...

Writes benchmarks/results/heads_<device>.json and .md (no targets: the issue asked for the comparison).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import typer

from fgia.data import build_osfgir_split, read_dataset
from fgia.data.samples import FineGrainedDataset
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.features import extract_features
from fgia.metrics import evaluate_retrieval
from fgia.models import model_spec
from fgia.runtime import atomic_write_text, pick_device
from fgia.train import TrainConfig, evaluate, fit

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class HeadsBenchConfig:
    """What the benchmark trains; every model shares backbone, schedule and seed."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str | None = "efficientnet-lite0"
    image_size: int = 96
    epochs: int = 8
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.02
    head_dim: int = 256
    head_stages: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    threads: int = 2


def _data(folder: Path) -> tuple[FineGrainedDataset, FineGrainedDataset, FineGrainedDataset]:
    """(aux train, aux held-out test, unseen species) of the default synthetic benchmark in `folder`."""
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        generate_benchmark(SynthConfig(), folder, progress=True)
    ds = read_dataset(manifest)
    by_category = {c: ds.filter(lambda s, c=c: s.category == c) for c in sorted({s.category for s in ds.samples})}
    split = build_osfgir_split(by_category, seed=0)
    train, test = split.auxiliary.split("train"), split.auxiliary.split("test")
    unseen = split.database.filter(lambda s: s.label >= 0, name="unseen")
    unseen.samples += split.queries.samples
    return train, test, unseen


def _retrieval_map(features: np.ndarray, labels: np.ndarray) -> float:
    n = len(labels)
    return float(evaluate_retrieval(features, labels, features, labels, exclude_ids=np.arange(n))["mAP"])


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _features(model, ds: FineGrainedDataset, image_size: int) -> tuple[dict[str, np.ndarray], float]:
    """Per-head retrieval features of `ds` and the extraction time in ms/image."""
    start = time.perf_counter()
    feats = extract_features(model, ds.samples, model_spec(model, image_size=image_size, regions=False), workers=0)
    ms = 1000 * (time.perf_counter() - start) / len(feats)
    emb = feats.image
    if hasattr(model, "heads"):
        conv, norm = emb[:, : emb.shape[1] // 2], emb[:, emb.shape[1] // 2 :]
        return {"conv": conv, "norm": norm, "concat": np.hstack([_l2(conv), _l2(norm)])}, ms
    return {"gap": emb}, ms


def _measure(name: str, cfg: TrainConfig, train, test, unseen) -> dict:
    start = time.perf_counter()
    result = fit(cfg, train, progress=True)
    train_s = time.perf_counter() - start
    model = result.model
    row = {"model": name, "train_seconds": round(train_s, 1), "final_train_loss": result.history[-1]["loss"],
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if hasattr(model, "heads"):
        row.update(head_stages=model.config["head_stages"], shared_stages=len(model.trunk))
    acc = evaluate(model, test, batch_size=64)
    row.update({k: v for k, v in acc.items() if k.startswith(("top1", "mean_per_class"))})
    for split_name, ds in (("seen", test), ("unseen", unseen)):
        feats, ms = _features(model, ds, cfg.image_size)
        labels = np.array(ds.labels)
        row.update({f"mAP_{split_name}_{k}": _retrieval_map(v, labels) for k, v in feats.items()})
        row[f"extract_ms_per_image_{split_name}"] = ms
    return row


def _markdown(report: dict) -> str:
    rows = report["rows"]
    cn = next(r for r in rows if r["model"] == "cnnets(head_stages=0)")
    plain = next(r for r in rows if r["model"] == "plain")
    lines = [
        "# Conv-Net / Norm-Net / CN-Nets / plain on the default synthetic benchmark", "",
        f"Command: `{report['command']}`  ", f"Config: `{json.dumps(report['config'])}`  ",
        f"Data: {report['data']}  ", f"Machine: {report['machine']}; {report['elapsed_s']:.0f} s in all", "",
        "## Held-out images of the auxiliary species (CN-Nets with all backbone stages shared)", "",
        "| model | top-1 | mean per-class | mAP seen | mAP unseen |", "|---|---|---|---|---|",
        f"| Conv-Net head | {cn['top1_conv']:.3f} | {cn['mean_per_class_conv']:.3f} | {cn['mAP_seen_conv']:.3f} "
        f"| {cn['mAP_unseen_conv']:.3f} |",
        f"| Norm-Net head | {cn['top1_norm']:.3f} | {cn['mean_per_class_norm']:.3f} | {cn['mAP_seen_norm']:.3f} "
        f"| {cn['mAP_unseen_norm']:.3f} |",
        f"| CN-Nets (both) | {cn['top1']:.3f} | {cn['mean_per_class']:.3f} | {cn['mAP_seen_concat']:.3f} "
        f"| {cn['mAP_unseen_concat']:.3f} |",
        f"| plain (GAP + linear) | {plain['top1']:.3f} | {plain['mean_per_class']:.3f} | "
        f"{plain['mAP_seen_gap']:.3f} | {plain['mAP_unseen_gap']:.3f} |", "",
        "CN-Nets accuracy = mean of both heads' scores; CN-Nets mAP = concatenation of the L2-normalised head "
        "features. mAP: Euclidean, leave-one-out; seen = held-out images of the training species, unseen = "
        "all images of the other species.", "",
        "## Shared depth (Table 2): heads own the last k backbone stages", "",
        "| k (head stages) | shared stages | params (M) | top-1 | top-1 conv | top-1 norm | mAP unseen concat "
        "| extraction ms/image |", "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["model"].startswith("cnnets"):
            lines.append(f"| {r['head_stages']} | {r['shared_stages']} | {r['params_m']:.2f} | {r['top1']:.3f} | "
                         f"{r['top1_conv']:.3f} | {r['top1_norm']:.3f} | {r['mAP_unseen_concat']:.3f} | "
                         f"{r['extract_ms_per_image_seen']:.2f} |")
    return "\n".join(lines) + "\n"


def run(bench: HeadsBenchConfig, data: Path | None = None, out: Path = RESULTS, command: str = "") -> dict:
    """Train and measure every model; write heads_<device>.json / .md under `out`; return the report."""
    started = time.perf_counter()
    torch.set_num_threads(bench.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = data or Path(tmp) / "synth"
        train, test, unseen = _data(folder)
        base = TrainConfig(image_size=bench.image_size, epochs=bench.epochs, batch_size=bench.batch_size,
                           optimizer=bench.optimizer, lr=bench.lr, warmup_epochs=1, seed=bench.seed,
                           workers=min(2, os.cpu_count() or 1))
        common = {"backbone": bench.backbone, "weights": bench.weights}
        rows = []
        plain_cfg = TrainConfig(**{**asdict(base), "model": "plain", "model_kwargs": common})
        rows.append(_measure("plain", plain_cfg, train, test, unseen))
        for k in bench.head_stages:
            cfg = TrainConfig(**{**asdict(base), "model": "cnnets",
                                 "model_kwargs": {**common, "head_stages": k, "head_dim": bench.head_dim}})
            rows.append(_measure(f"cnnets(head_stages={k})", cfg, train, test, unseen))
    device = pick_device().type
    report = {
        "targets": {}, "command": command, "config": asdict(bench), "device": device,
        "data": f"SynthConfig() defaults ({asdict(SynthConfig())}); OSFGIR split seed 0: "
                f"{len(train.classes)} auxiliary species, {len(train)} train / {len(test)} held-out images; "
                f"{len(unseen)} images of unseen species",
        "machine": f"{platform.machine()}, {bench.threads} CPU threads, torch {torch.__version__}",
        "rows": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"heads_{device}.json", json.dumps(report, indent=1))
    atomic_write_text(out / f"heads_{device}.md", _markdown(report))
    return report


def main(
    data: Path | None = typer.Option(None, help="folder of the synthetic benchmark (generated when missing)"),
    out: Path = typer.Option(RESULTS, help="where heads_<device>.json / .md go"),
    epochs: int = typer.Option(HeadsBenchConfig.epochs),
    backbone: str = typer.Option(HeadsBenchConfig.backbone),
    weights: str | None = typer.Option(HeadsBenchConfig.weights, help="'none' for random init"),
    image_size: int = typer.Option(HeadsBenchConfig.image_size),
    threads: int = typer.Option(HeadsBenchConfig.threads),
) -> None:
    """Run the benchmark and print the Markdown table."""
    bench = HeadsBenchConfig(backbone=backbone, weights=None if weights == "none" else weights, epochs=epochs,
                             image_size=image_size, threads=threads)
    command = "python benchmarks/heads.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in dict(epochs=epochs, backbone=backbone, weights=weights,
                                                         image_size=image_size, threads=threads).items())
    report = run(bench, data, out, command)
    print(_markdown(report))


if __name__ == "__main__":
    typer.run(main)
