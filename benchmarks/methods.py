"""The survey's methods side by side on the default synthetic benchmark (CPU-sized).

Generates the default `SynthConfig` benchmark (optionally with fewer images per species), takes its zero-shot
split (the first half of the species is the auxiliary set that trains every trained method and fits the
PCA-whitening; the second half is retrieved leave-one-out), runs `fgia.eval.methods.bench_dataset` and
writes benchmarks/results/methods.{md,json}, rewritten after every method.

    python benchmarks/methods.py [--images-per-species 40] [--epochs 5] [--image-size 96] [--methods ...]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from fgia.data import read_dataset
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.eval.methods import DEFAULT_METHODS, MethodsConfig, bench_dataset, write_methods_table

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fgia_methods_bench"), help="synthetic data folder")
    parser.add_argument("--images-per-species", type=int, default=SynthConfig.images_per_species)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--no-whiten", action="store_true", help="L2 only, no PCA-whitening")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=RESULTS / "methods")
    args = parser.parse_args()

    synth = SynthConfig(images_per_species=args.images_per_species)
    manifest = args.out / f"ips{args.images_per_species}" / "manifest.csv"
    if not manifest.exists():
        generate_benchmark(synth, manifest.parent, progress=False)
    dataset = read_dataset(manifest)
    cfg = MethodsConfig(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, whiten=not args.no_whiten,
                        device=args.device)
    extra = {
        "dataset": f"SynthConfig(images_per_species={synth.images_per_species}): {synth.num_labelled} images, "
                   f"{synth.categories * synth.species_per_category} species, zero-shot split",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
    }
    rows = []
    start = time.perf_counter()

    def record(row) -> None:
        # rewrite the table after every method, so a long run leaves its finished rows behind
        rows.append(row)
        print(f"{row.method}: mAP {row.mAP:.3f} R@1 {row.recall['R@1']:.3f}", flush=True)
        write_methods_table(rows, args.results, cfg, {**extra, "seconds_so_far": round(time.perf_counter() - start)})

    bench_dataset(dataset, args.methods, cfg, on_result=record)
    print(Path(args.results).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
