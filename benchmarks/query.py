"""Single-query latency of the full OSFGIR pipeline, per stage (p50/p90 ms), against a database of N images.

Part 1 (pipeline): the database holds the real features of an indexed run (`--run`, an `fgia eval`/`fgia demo` output folder with
index/ and system/) or, without one, of a quickly trained tiny system on a small synthetic benchmark; it is
then padded with random unit-norm features up to `--n` images (default 300K), so the search stages (coarse
k-NN over N, fine re-ranking of K) cost what they would at that size. The feature stages only depend on the
model and the image size. The fine dimension of a small system is capped by its tiny auxiliary set, so
part 2 (search stages at the paper's dimensions) times the coarse search (N x 32) and the fine re-ranking
(K x 1024, +QE) on random features with the same code (`fgia.retrieval.search`). Target (issue 4): p50 total under 20 ms on a GPU at 300K images.
Writes benchmarks/results/query_<device>.json and .md.

    python benchmarks/query.py                               # tiny system, 300K, CPU or GPU
    python benchmarks/query.py --run fgia-out/demo --n 100000
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fgia.data import OsfgirSplit, build_osfgir_split, load_image
from fgia.data.synthetic import SynthConfig
from fgia.eval.osfgir import OsfgirConfig, load_datasets
from fgia.features.pca import l2_normalize
from fgia.index import StoreRow, create_index
from fgia.retrieval.engine import STAGES, RetrievalEngine, build_index
from fgia.retrieval.search import average_query_expansion, rerank
from fgia.retrieval.system import SelectionConfig, SystemConfig, train_system
from fgia.runtime import atomic_write_text, pick_device

RESULTS = Path(__file__).resolve().parent / "results"


def tiny_run(out: Path, backbone: str, image_size: int, device: str) -> tuple[Path, list[Path]]:
    """Train a 1-epoch system on a small synthetic benchmark and index it; returns (index dir, query paths)."""
    cfg = OsfgirConfig(synth=SynthConfig(categories=3, species_per_category=4, images_per_species=8,
                                         image_size=max(64, image_size)), out_dir=out)
    datasets, distractors = load_datasets(cfg, progress=False)
    split = build_osfgir_split(datasets, queries_per_class=2, distractors=distractors)
    system = SystemConfig(backbone=backbone, image_size=image_size, epochs=1, batch_size=8, device=device,
                          selection=SelectionConfig(validation_fraction=0.0))
    system_dir = train_system(split.auxiliary, system, out / "system", progress=False)
    build_index(system_dir, split.database, out / "index", device=device)
    return out / "index", [s.path for s in split.queries.samples]


def pad_database(engine: RetrievalEngine, n: int, factory: str, device: str, seed: int) -> None:
    """Add random unit-norm features (and random routes) to every array of `engine`, in memory, up to `n` images."""
    extra = n - len(engine)
    if extra <= 0:
        return
    rng = np.random.default_rng(seed)
    for name, values in engine.arrays.items():
        if name == "route":
            noise = rng.integers(0, len(engine.system.categories), (extra, 1)).astype(np.float32)
        else:
            noise = l2_normalize(rng.standard_normal((extra, values.shape[1]), dtype=np.float32))
        engine.arrays[name] = np.concatenate([values, noise])
    engine.coarse_index = create_index(engine.arrays["coarse"].shape[1], factory, device)
    engine.coarse_index.train(engine.arrays["coarse"])
    engine.coarse_index.add(engine.arrays["coarse"])
    engine.rows = engine.rows + [StoreRow(path="<synthetic>")] * extra
    engine.top_k = engine.system.config.resolve_top_k(n)


def measure(engine: RetrievalEngine, images: list, repeats: int, query_expansion: bool) -> dict[str, dict[str, float]]:
    """p50/p90/mean ms per stage over `repeats` passes of single-image searches (after one warm-up)."""
    engine.search(images[:1], query_expansion=query_expansion)
    times = {s: [] for s in STAGES}
    for _ in range(repeats):
        for result in engine.search(images, query_expansion=query_expansion):
            for s in STAGES:
                times[s].append(result.timings_ms[s])
    return {s: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "mean": float(np.mean(v))}
            for s, v in times.items()}


def paper_dims(n: int, k: int, factory: str, device: str, queries: int, seed: int) -> dict[str, dict[str, float]]:
    """p50/p90 ms of the coarse search (n x 32) and the fine re-ranking of k candidates (1024-d, +QE)."""
    rng = np.random.default_rng(seed)
    coarse = l2_normalize(rng.standard_normal((n, 32), dtype=np.float32))
    fine = l2_normalize(rng.standard_normal((n, 1024), dtype=np.float32))
    index = create_index(32, factory, device)
    index.train(coarse)
    index.add(coarse)
    times: dict[str, list[float]] = {"coarse_search": [], "fine_search": [], "fine_search+QE": []}
    for q in rng.integers(0, n, queries + 1):
        t0 = time.perf_counter()
        _, candidates = index.search(coarse[q : q + 1], k)
        t1 = time.perf_counter()
        ranking = rerank(fine[q : q + 1], fine, candidates)
        t2 = time.perf_counter()
        expanded = average_query_expansion(fine[q : q + 1], fine, ranking.ids[:, :5])
        rerank(expanded, fine, index.search(average_query_expansion(coarse[q : q + 1], coarse, ranking.ids[:, :5]),
                                            k)[1])
        t3 = time.perf_counter()
        for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[name].append(dt * 1000.0)
    # The first query pays one-off allocations; leave it out.
    return {name: {"p50": float(np.percentile(v[1:], 50)), "p90": float(np.percentile(v[1:], 90))}
            for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an fgia eval/demo output folder (index/ + system/)")
    ap.add_argument("--n", type=int, default=300_000, help="database size after padding")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--factory", default="Flat", help="coarse index factory for the padded database")
    ap.add_argument("--backbone", default="resnet50", help="for the tiny system (without --run)")
    ap.add_argument("--image-size", type=int, default=224, help="for the tiny system (without --run)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = str(pick_device(args.device))

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            index_dir = args.run / "index"
            queries = [s.path for s in OsfgirSplit.load(args.run / "split").queries.samples]
        else:
            index_dir, queries = tiny_run(Path(tmp), args.backbone, args.image_size, device)
        engine = RetrievalEngine.load(index_dir, device=device)
        real = len(engine)
        started = time.perf_counter()
        pad_database(engine, args.n, args.factory, device, args.seed)
        pad_s = time.perf_counter() - started
        images = [load_image(p) for p in queries[: args.queries]]
        stages = {f"c2f{'+QE' if qe else ''}": measure(engine, images, args.repeats, qe) for qe in (False, True)}
        cfg = engine.system.config
    search_stages = paper_dims(args.n, engine.top_k, args.factory, device, args.queries * args.repeats, args.seed)

    result = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "database": {"n": len(engine), "real": real, "synthetic_padding": len(engine) - real},
        "factory": args.factory,
        "top_k": engine.top_k,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "dims": {k: int(v.shape[1]) for k, v in engine.arrays.items()},
        "queries": len(images),
        "repeats": args.repeats,
        "build_padding_s": pad_s,
        "stages_ms": stages,
        "search_stages_at_paper_dims_ms": search_stages,
        "target": "p50 total < 20 ms on a GPU at 300K images",
    }
    stem = f"query_{'cuda' if device.startswith('cuda') else 'cpu'}"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(result, indent=2))
    lines = [
        f"# Single-query latency ({device}{', ' + result['gpu'] if result['gpu'] else ''})", "",
        f"Database {len(engine):,} images ({real} real + random padding), coarse index `{args.factory}`, "
        f"K={engine.top_k}, {cfg.backbone} at {cfg.image_size} px, {len(images)} queries x {args.repeats}.", "",
        "| stage | " + " | ".join(f"{p} p50 | {p} p90" for p in stages) + " |",
        "|---|" + "---:|" * (2 * len(stages)),
    ]
    for s in STAGES:
        lines.append(f"| {s} | " + " | ".join(f"{t[s]['p50']:.2f} | {t[s]['p90']:.2f}" for t in stages.values()) + " |")
    lines += ["", f"Search stages at the paper's dimensions (N={args.n:,} x 32 coarse, K={engine.top_k} x 1024 fine):", "",
              "| stage | p50 | p90 |", "|---|---:|---:|"]
    lines += [f"| {name} | {t['p50']:.2f} | {t['p90']:.2f} |" for name, t in search_stages.items()]
    lines += ["", f"Command: `python benchmarks/query.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items() if v is not None)}`", ""]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
