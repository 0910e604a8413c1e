"""The OSFGIR protocol end to end: data -> split -> train on AD -> index D -> query -> the paper's tables.

`run_osfgir(cfg)` does one run and writes into `cfg.out_dir`: the resolved config (osfgir.yaml), the split,
the system, the index and report.md / report.json / report.html. `run_demo` is the `fgia demo` job: the
packaged default config (configs/demo.yaml) on the synthetic benchmark, or on a real dataset folder.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fgia.config import load_yaml, save_yaml, to_dict
from fgia.data import (
    FineGrainedDataset,
    OsfgirSplit,
    build_osfgir_split,
    load_image,
    read_dataset,
    read_shared_composite,
)
from fgia.data import OsfgirConfig as SplitConfig
from fgia.data.protocols import SHARED_COMPOSITE
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.eval.methods import MethodEmbedder, MethodsConfig
from fgia.eval.metrics import evaluate_rankings, evaluate_retrieval
from fgia.eval.report import Hit, OsfgirReport, QueryExample, print_report, write_report
from fgia.retrieval.engine import STAGES, ImageFeatures, RetrievalEngine, build_index
from fgia.retrieval.search import Ranking, knn
from fgia.retrieval.system import SystemConfig, coarse_accuracy_table, load_aux_embeddings, train_system
from fgia.runtime import atomic_path, output_folder, pick_device, seed_everything

DEMO_CONFIG = "demo.yaml"
OSFGIR_CONFIG = "osfgir.yaml"
OSFGIR_KIND = "osfgir run"


@dataclass
class OsfgirConfig:
    """One OSFGIR run.

    Data: `data` is a dataset folder/manifest whose samples carry a meta-category (e.g. `fgia synth` output),
    or a folder laid out like the shared real-image composite (cub100/, stanford_cars/, flowers102_partial/);
    with no `data`, the synthetic benchmark `synth` is generated into `out_dir/data`. Unlabelled images of
    the data (distractors) join the database. `baselines` are single-stage methods on the same split and
    backbone, named as in `fgia bench methods` ("gap-offtheshelf", "scda-offtheshelf", "plain" = the plain
    backbone fine-tuned on AD, ...); `baseline_weights` initialise them (default: the system's `weights`).
    `timing_queries` single-query searches feed Table 6; the first `examples` of them go to the HTML report.
    """

    data: Path | None = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    factory: str = "Flat"
    baselines: list[str] = field(default_factory=lambda: ["gap-offtheshelf"])
    baseline_weights: str | None = None
    timing_queries: int = 20
    examples: int = 4
    seed: int = 0
    out_dir: Path = Path("fgia-out/osfgir")


def load_datasets(cfg: OsfgirConfig, progress: bool = True) -> tuple[dict[str, FineGrainedDataset], FineGrainedDataset | None]:
    """({meta-category: labelled dataset}, unlabelled distractors or None) for the configured data source."""
    if cfg.data is None:
        manifest = generate_benchmark(cfg.synth, Path(cfg.out_dir) / "data", progress=progress)
        return split_by_category(read_dataset(manifest))
    root = Path(cfg.data)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if root.is_dir() and any((root / folder).is_dir() for folder in SHARED_COMPOSITE.values()):
        return read_shared_composite(root), None
    return split_by_category(read_dataset(root))


def split_by_category(ds: FineGrainedDataset) -> tuple[dict[str, FineGrainedDataset], FineGrainedDataset | None]:
    """Labelled samples per meta-category, and the unlabelled ones (None when there are none)."""
    labelled = [s for s in ds.samples if s.label >= 0]
    missing = [s.path for s in labelled if not s.category]
    if missing:
        raise ValueError(
            f"{ds.name!r}: {len(missing)} labelled image(s) have no meta-category (e.g. {missing[0]}); OSFGIR routes "
            "by category: use a manifest with a `category` column or the shared composite layout"
        )
    categories = sorted({s.category for s in labelled})
    per_category = {c: ds.filter(lambda s, c=c: s.label >= 0 and s.category == c, name=c) for c in categories}
    unlabelled = ds.filter(lambda s: s.label < 0, name=f"{ds.name}:distractors")
    return per_category, (unlabelled if len(unlabelled) else None)


def run_osfgir(cfg: OsfgirConfig, progress: bool = True, console: Console | None = None,
               force: bool = False) -> OsfgirReport:
    """Run the protocol; returns the report (also written to `cfg.out_dir`). The run is written beside
    `cfg.out_dir` and moved into place when complete; a previous run there is replaced, any other non-empty
    folder refused unless `force` (see `fgia.runtime.output_folder`)."""
    with output_folder(cfg.out_dir, OSFGIR_KIND, force=force) as out:
        return _run_osfgir(cfg, out, progress, console or Console())


def _run_osfgir(cfg: OsfgirConfig, out: Path, progress: bool, console: Console) -> OsfgirReport:
    started = time.perf_counter()
    save_yaml(cfg, out / "osfgir.yaml")
    seed_everything(cfg.seed)

    console.log("data and split")
    datasets, distractors = load_datasets(replace(cfg, out_dir=out), progress)
    s = cfg.split
    split = build_osfgir_split(datasets, s.aux_fraction, s.query_fraction, s.queries_per_class, distractors,
                               cfg.seed, s.max_images_per_class)
    split.save(out / "split")
    console.log(f"training the system on {len(split.auxiliary)} auxiliary images")
    system_dir = train_system(split.auxiliary, cfg.system, out / "system", progress=progress)
    console.log(f"indexing {len(split.database)} database images")
    index_dir = out / "index"
    build_index(system_dir, split.database, index_dir, factory=cfg.factory, device=cfg.system.device)
    engine = RetrievalEngine.load(index_dir, device=cfg.system.device)

    console.log(f"querying with {len(split.queries)} images")
    queries = split.queries
    qf = engine.query_features(queries.samples)
    query_labels = np.array(queries.labels)[qf.index]
    query_categories = [queries.samples[i].category for i in qf.index]
    scores = _pipeline_scores(engine, qf, query_labels, query_categories)
    console.log(f"single-stage baselines: {', '.join(cfg.baselines)}")
    scores |= _baseline_scores(cfg, split, qf.index, query_labels, query_categories, engine.labels())
    aux_embedding, aux_targets = load_aux_embeddings(system_dir)
    targets = np.array([engine.system.categories.index(c) for c in query_categories])
    classifier = coarse_accuracy_table(aux_embedding, aux_targets, qf.coarse_full, targets,
                                       cfg.system.classifier_dims, cfg.seed)
    latency, timings, examples = _timed_queries(engine, queries, cfg.timing_queries, cfg.examples)
    run_facts = {"backbone": cfg.system.backbone, "weights": cfg.system.weights, "input_size": cfg.system.image_size,
                 "epochs": cfg.system.epochs, "split_seed": split.seed}
    methods = [{"method": name, **run_facts, "dim": sc.dim, "mAP": sc.map["all"], "R@1": sc.r1,
                "ms_per_query": sc.ms_per_query if sc.ms_per_query is not None else latency.get(name)}
               for name, sc in scores.items()]
    report = OsfgirReport(
        config=to_dict(cfg),
        seed=cfg.seed,
        split=_split_summary(split),
        versions=_versions(cfg.system.device),
        map_rows={name: sc.map for name, sc in scores.items()},
        methods=methods,
        classifier=classifier,
        timings_ms=timings,
        examples=examples,
        elapsed_s=time.perf_counter() - started,
    )
    write_report(report, out)
    return report


@dataclass
class RowScores:
    """One retrieval method's result: mAP per query meta-category (and "all"), R@1 over all queries, feature
    dim, and ms per query when measured apart from the engine's single-query searches."""

    map: dict[str, float]
    r1: float
    dim: int
    ms_per_query: float | None = None


ENGINE_ROWS = {  # report row -> (pipeline, query expansion, stored feature searched by "single")
    "Coarse full-d": ("single", False, "coarse_full"),
    "Coarse {coarse_dim}-d": ("single", False, "coarse"),
    "C-to-F image-only": ("c2f-image", False, None),
    "C-to-F unified": ("c2f-unified", False, None),
    "C-to-F full": ("c2f", False, None),
    "C-to-F full + QE": ("c2f", True, None),
}


def _row_name(template: str, engine: RetrievalEngine) -> str:
    return template.format(coarse_dim=engine.system.coarse_pca.n_components)


def _group_scores(ranked: Any, labels: np.ndarray, categories: list[str], db_labels: np.ndarray, dim: int,
                  ms_per_query: float | None = None) -> RowScores:
    """mAP per query meta-category and overall, R@1 overall. `ranked` is (query features, database features) for
    an exact search of the whole database, or a Ranking of (possibly truncated) database ids."""
    cats = np.array(categories)
    groups = {c: cats == c for c in sorted(set(categories))} | {"all": np.ones(len(cats), bool)}

    def score(mask: np.ndarray) -> dict[str, Any]:
        if isinstance(ranked, Ranking):
            return evaluate_rankings(ranked.ids[mask], labels[mask], db_labels, ks=(1,))
        q, db = ranked
        return evaluate_retrieval(q[mask], labels[mask], db, db_labels, ks=(1,))

    per_group = {g: score(m) for g, m in groups.items()}
    return RowScores({g: r["mAP"] for g, r in per_group.items()}, per_group["all"]["R@1"], dim, ms_per_query)


def _pipeline_scores(
    engine: RetrievalEngine, qf: ImageFeatures, labels: np.ndarray, categories: list[str]
) -> dict[str, RowScores]:
    """Every engine pipeline's scores; single-stage rows rank the whole database exactly, coarse-to-fine rows
    their re-ranked top-K (relevant images outside it count as never retrieved)."""
    db_labels = engine.labels()
    queries = {"coarse_full": qf.coarse_full, "coarse": qf.coarse}
    out = {}
    for template, (pipeline, qe, feature) in ENGINE_ROWS.items():
        if pipeline == "single":
            db = np.asarray(engine.store.array("coarse")) if feature == "coarse" else engine.arrays[feature]
            ranked: Any = (queries[feature], db)
            dim = db.shape[1]
        else:
            ranked = engine.rank(qf, pipeline, query_expansion=qe)
            dim = engine.system.fine_dim // (2 if pipeline == "c2f-image" else 1)
        out[_row_name(template, engine)] = _group_scores(ranked, labels, categories, db_labels, dim)
    return out


def _baseline_scores(
    cfg: OsfgirConfig, split: OsfgirSplit, query_rows: np.ndarray, labels: np.ndarray, categories: list[str],
    db_labels: np.ndarray,
) -> dict[str, RowScores]:
    """Single-stage baselines on the same split and backbone (see `OsfgirConfig.baselines`). ms per query =
    feature extraction per image + exact search per query."""
    sc = cfg.system
    methods_cfg = MethodsConfig(
        backbone=sc.backbone, weights=cfg.baseline_weights or sc.weights, image_size=sc.image_size,
        epochs=sc.epochs, batch_size=sc.batch_size, lr=sc.lr,
        backbone_lr_scale=sc.train_config().backbone_lr_scale, whiten=False, seed=cfg.seed, device=sc.device,
        workers=sc.workers, model_kwargs={},
    )
    embedder = MethodEmbedder(split.auxiliary, methods_cfg)
    query_samples = [split.queries.samples[i] for i in query_rows]
    out = {}
    for method in cfg.baselines:
        q, db = embedder.embed(method, query_samples, split.database.samples)
        if len(q.index) != len(query_samples) or len(db.index) != len(split.database):
            raise ValueError(f"{method}: images became unreadable during the run")
        start = time.perf_counter()
        knn(q.features, db.features, 10)
        search_ms = 1000 * (time.perf_counter() - start) / max(1, len(q.index))
        out[f"Single-stage {method}"] = _group_scores((q.features, db.features), labels, categories, db_labels,
                                                      q.features.shape[1], q.ms_per_image + search_ms)
    return out


def _timed_queries(
    engine: RetrievalEngine, queries: FineGrainedDataset, n: int, n_examples: int
) -> tuple[dict[str, float], dict[str, dict[str, float]], list[QueryExample]]:
    """Real single-query searches with every engine row: its p50 latency (ms, every stage included), Table 6
    from the full pipeline + QE, and its first few queries as HTML examples."""
    samples = queries.samples[: max(n, n_examples)]
    if not samples:
        return {}, {}, []
    images = [load_image(s.path) for s in samples]
    engine.search(images[:1], pipeline="c2f", query_expansion=True)  # warm-up: first-call allocations
    runs = {
        _row_name(template, engine): engine.search(images, top_k=10, pipeline=pipeline, query_expansion=qe,
                                                   feature=feature or "coarse")
        for template, (pipeline, qe, feature) in ENGINE_ROWS.items()
    }
    latency = {name: float(np.percentile([r.timings_ms["total"] for r in rs[:n]], 50)) for name, rs in runs.items()}
    results = runs["C-to-F full + QE"]
    per_stage = {st: np.array([r.timings_ms[st] for r in results[:n]]) for st in STAGES}
    timings = {
        st: {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}
        for st, v in per_stage.items()
        if len(v)
    }
    examples = []
    for s, r in zip(samples[:n_examples], results):
        name = queries.classes[s.label]
        labels = r.labels or [None] * len(r.ids)
        hits = [Hit(path=p, distance=d, correct=lab == name) for p, d, lab in zip(r.paths, r.distances, labels)]
        examples.append(QueryExample(str(s.path), name, s.category or "", r.category, hits))
    return latency, timings, examples


def _split_summary(split: OsfgirSplit) -> dict[str, Any]:
    return {
        "categories": split.categories,
        "auxiliary": len(split.auxiliary),
        "auxiliary_species": len(split.auxiliary.classes),
        "database": len(split.database),
        "database_species": len(split.database.classes),
        "distractors": sum(s.label < 0 for s in split.database.samples),
        "queries": len(split.queries),
        "split_seed": split.seed,
    }


def _versions(device: str) -> dict[str, str]:
    out = {"python": platform.python_version(), "device": str(pick_device(device))}
    for pkg in ("fgia", "torch", "timm", "faiss-cpu", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def default_config(name: str = DEMO_CONFIG) -> Path:
    """Path of a packaged default config (fgia/configs/<name>)."""
    path = Path(str(resources.files("fgia") / "configs" / name))
    if not path.is_file():
        raise FileNotFoundError(f"no packaged config {name!r} at {path}")
    return path


def evaluate_osfgir(
    config: Path | None = None,
    data: Path | None = None,
    out_dir: Path = Path("fgia-out/eval"),
    progress: bool = True,
    console: Console | None = None,
    force: bool = False,
    **overrides: Any,
) -> OsfgirReport:
    """The `fgia eval` job: run the protocol from an OsfgirConfig YAML (default: configs/osfgir.yaml with
    `data`, configs/demo.yaml on the synthetic benchmark without), print the tables and where the reports
    are. `overrides` replace top-level OsfgirConfig fields; `force` replaces a folder that is not a run's."""
    console = console or Console()
    default = default_config(OSFGIR_CONFIG if data is not None else DEMO_CONFIG)
    cfg = load_yaml(OsfgirConfig, config or default, data=data, out_dir=out_dir, **overrides)
    report = run_osfgir(cfg, progress=progress, console=console, force=force)
    print_report(report, console)
    console.print(f"reports: {Path(cfg.out_dir) / 'report.md'}, {Path(cfg.out_dir) / 'report.html'}")
    return report


def run_demo(
    data: Path | None = None,
    out_dir: Path = Path("fgia-out/demo"),
    config: Path | None = None,
    progress: bool = True,
    console: Console | None = None,
    force: bool = False,
    **overrides: Any,
) -> OsfgirReport:
    """The `fgia demo` job: configs/demo.yaml (or `config`) on the synthetic benchmark, or on the real dataset
    folder `data` with the same CPU-sized settings; prints the tables and writes the MD/JSON/HTML reports."""
    return evaluate_osfgir(config or default_config(DEMO_CONFIG), data, out_dir, progress, console, force,
                           **overrides)


def run_real_bench(
    shared: Path,
    full: bool = False,
    weights: str | None = None,
    results_dir: Path = Path("benchmarks/results"),
    work_dir: Path = Path("fgia-out/bench-real"),
    progress: bool = True,
    console: Console | None = None,
    force: bool = False,
) -> OsfgirReport:
    """`fgia bench real`: the protocol on the shared birds/cars/flowers composite at `shared`, CPU-sized
    (configs/real.yaml) or full size (`full`: configs/osfgir.yaml, meant for a GPU). Models and index go to
    `work_dir`; the report is copied to `results_dir/real_<size>_<device>.{md,json}`."""
    console = console or Console()
    size = "full" if full else "reduced"
    cfg = load_yaml(OsfgirConfig, default_config("osfgir.yaml" if full else "real.yaml"), data=shared,
                    out_dir=Path(work_dir) / size)
    if weights is not None:
        cfg.system.weights = weights
    report = run_osfgir(cfg, progress=progress, console=console, force=force)
    print_report(report, console)
    name = f"real_{size}_{pick_device(cfg.system.device).type}"
    for suffix in (".md", ".json"):
        with atomic_path(Path(results_dir) / f"{name}{suffix}") as tmp:
            shutil.copyfile(Path(cfg.out_dir) / f"report{suffix}", tmp)
    console.print(f"results: {Path(results_dir) / name}.md")
    return report
