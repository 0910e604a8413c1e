"""Extraction throughput of the full fgia pipeline relative to the bare backbone forward pass, in one run.

Measures (images/s): (1) the bare trunk forward on a batch already on the device; (2) `extract_features`
without regions (loading, decoding, resizing, CN-Nets forward); (3) the same with discriminative regions (box
finding, on-device roi_align crop, second forward). Prints the ratios (targets: >= 0.9 without regions,
>= 0.45 with) and writes benchmarks/results/extract_<device>.{json,md}.

    python benchmarks/extract.py --backbone resnet18 --size 224 --batch 16 --n 128 --device cpu
    python benchmarks/extract.py --backbone resnet50 --size 448 --batch 32 --n 1024   # on a GPU

Images: the real CUB subset in ../shared/data when present, else generated noise images (written to a temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fgia.data.samples import Sample
from fgia.features.extract import autocast_for, extract_features, prepare_model
from fgia.models import create_model, create_trunk, model_spec
from fgia.results import target
from fgia.runtime import atomic_write_text, pick_device, seed_everything

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_CUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100" / "CUB_200_2011" / "images"


@dataclass
class BenchConfig:
    backbone: str = "resnet50"
    size: int = 448
    batch: int = 32
    n: int = 1024
    device: str = "auto"
    workers: int = min(8, os.cpu_count() or 1)
    head_stages: list[int] = field(default_factory=lambda: [0])
    head_dim: int = 1024
    num_classes: int = 100
    threads: int | None = None
    repeats: int = 2


def sample_images(n: int) -> tuple[list[Sample], str]:
    """`n` image samples: real CUB images when the shared data is there, else generated ones."""
    paths = sorted(SHARED_CUB.glob("*/*.jpg"))[:n] if SHARED_CUB.is_dir() else []
    if len(paths) == n:
        return [Sample(p, 0) for p in paths], f"shared cub100 ({n} JPEGs)"
    folder = Path(tempfile.mkdtemp(prefix="fgia_bench_"))
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return [Sample(p, 0) for p in sorted(folder.glob("*.jpg"))], f"generated noise ({n} 320x240 JPEGs)"


def bare_rate(cfg: BenchConfig, device: torch.device) -> float:
    """Images/s of the trunk alone on a batch already on the device (same size, batch, precision, layout)."""
    trunk = prepare_model(create_trunk(cfg.backbone), device)
    batch = torch.randn(cfg.batch, 3, cfg.size, cfg.size, device=device).contiguous(memory_format=torch.channels_last)
    steps = max(1, cfg.n // cfg.batch)
    with torch.inference_mode(), autocast_for(device):
        trunk(batch)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            trunk(batch)
        _sync(device)
    return steps * cfg.batch / (time.perf_counter() - start)


def pipeline_rate(cfg: BenchConfig, model: torch.nn.Module, samples: list[Sample], regions: bool) -> float:
    """Images/s of `extract_features` over `samples` (after a one-batch warm-up)."""
    spec = model_spec(model, image_size=cfg.size, regions=regions)
    kwargs = dict(batch_size=cfg.batch, workers=cfg.workers, device=cfg.device)
    extract_features(model, samples[: cfg.batch], spec, **kwargs)
    start = time.perf_counter()
    features = extract_features(model, samples, spec, **kwargs)
    elapsed = time.perf_counter() - start
    if len(features) != len(samples):
        raise RuntimeError(f"only {len(features)} of {len(samples)} images were extracted")
    return len(samples) / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=defaults.backbone)
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--n", type=int, default=defaults.n, help="images per measurement")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="DataLoader workers")
    parser.add_argument("--head-stages", type=int, nargs="+", default=defaults.head_stages)
    parser.add_argument("--head-dim", type=int, default=defaults.head_dim)
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="interleaved rounds; best rate kept")
    args = parser.parse_args()
    started = time.perf_counter()
    cfg = BenchConfig(**{k: v for k, v in vars(args).items()})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(0)
    device = pick_device(cfg.device)
    samples, source = sample_images(cfg.n)

    models = {
        hs: create_model(
            "cnnets", num_classes=cfg.num_classes, backbone=cfg.backbone, head_stages=hs, head_dim=cfg.head_dim
        )
        for hs in cfg.head_stages
    }
    # Rounds interleave all measurements so a busy machine slows each of them alike; the best of each is kept.
    bare, plain, region = 0.0, dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0)
    for _ in range(cfg.repeats):
        bare = max(bare, bare_rate(cfg, device))
        for hs, model in models.items():
            plain[hs] = max(plain[hs], pipeline_rate(cfg, model, samples, regions=False))
            region[hs] = max(region[hs], pipeline_rate(cfg, model, samples, regions=True))
    rows = [
        {
            "head_stages": hs,
            "no_regions_img_s": round(plain[hs], 2),
            "regions_img_s": round(region[hs], 2),
            "ratio_no_regions": round(plain[hs] / bare, 3),
            "ratio_regions": round(region[hs] / bare, 3),
        }
        for hs in models
    ]
    for row in rows:
        print(
            f"head_stages={row['head_stages']}: bare {bare:.1f} img/s | no regions {row['no_regions_img_s']} img/s "
            f"(ratio {row['ratio_no_regions']}, target 0.90) | regions {row['regions_img_s']} img/s "
            f"(ratio {row['ratio_regions']}, target 0.45)"
        )

    name = device.type
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    report = {
        "targets": {
            "ratio_no_regions": target(min(r["ratio_no_regions"] for r in rows), 0.9, ">="),
            "ratio_regions": target(min(r["ratio_regions"] for r in rows), 0.45, ">="),
        },
        "config": asdict(cfg),
        "images": source,
        "hardware": hardware,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # others' work on the machine skews the rates
        "torch": torch.__version__,
        "bare_img_s": round(bare, 2),
        "results": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(RESULTS / f"extract_{name}.json", json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Extraction throughput ({name}: {hardware})",
        "",
        f"`python benchmarks/extract.py {' '.join(_cli(cfg))}` — images: {source}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end. "
        f"Bare trunk forward: **{bare:.1f} img/s**.",
        "",
        *(f"Target {key}: {t['value']} ({t['op']} {t['threshold']}: {'met' if t['met'] else 'NOT met'})  "
          for key, t in report["targets"].items()),
        "",
        "| head_stages | no regions img/s | ratio (target 0.90) | with regions img/s | ratio (target 0.45) |",
        "|---|---|---|---|---|",
        *(
            f"| {r['head_stages']} | {r['no_regions_img_s']} | {r['ratio_no_regions']} | {r['regions_img_s']} | "
            f"{r['ratio_regions']} |"
            for r in rows
        ),
        "",
    ]
    atomic_write_text(RESULTS / f"extract_{name}.md", "\n".join(lines))
    print(f"wrote {RESULTS / f'extract_{name}.json'} and .md")


def _cli(cfg: BenchConfig) -> list[str]:
    out = []
    for key, value in asdict(cfg).items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return out


if __name__ == "__main__":
    main()
