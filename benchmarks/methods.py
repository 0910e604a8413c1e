"""The survey's methods side by side on the synthetic benchmark (CPU-sized).

Generates the `SynthConfig` benchmark (the default one, optionally with fewer images per species), takes its
zero-shot split (the first half of the species is the auxiliary set that trains every trained method and fits
the PCA-whitening; the second half is retrieved leave-one-out) and runs `fgia.eval.methods.run_methods_bench`,
which writes benchmarks/results/methods_<device>.{md,json} (methods_l2_<device> with --no-whiten), rewritten after
every method.

    python benchmarks/methods.py [--images-per-species 40] [--epochs 5] [--image-size 96] [--no-whiten]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.eval.methods import DEFAULT_METHODS, MethodsConfig, run_methods_bench
from fgia.runtime import pick_device

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-per-species", type=int, default=SynthConfig.images_per_species)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--no-whiten", action="store_true", help="L2 only, no PCA-whitening")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=None, help="table to write (default: see above)")
    args = parser.parse_args()

    cfg = MethodsConfig(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, whiten=not args.no_whiten,
                        device=args.device, synth=SynthConfig(images_per_species=args.images_per_species))
    # the generated images live outside the repo, one folder per size
    data_dir = Path("/tmp/fgia_methods_bench") / f"ips{args.images_per_species}"
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        generate_benchmark(cfg.synth, data_dir, progress=False)
    device = pick_device(args.device).type
    results = args.results or RESULTS / f"methods{'_l2' if args.no_whiten else ''}_{device}.md"
    run_methods_bench(manifest, args.methods, cfg, results)


if __name__ == "__main__":
    main()
