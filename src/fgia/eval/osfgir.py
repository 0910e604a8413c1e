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
from fgia.eval.metrics import evaluate_rankings, evaluate_retrieval
from fgia.eval.report import Hit, OsfgirReport, QueryExample, print_report, write_report
from fgia.features.extract import extract_features
from fgia.models import create_model
from fgia.retrieval.engine import ENGINE_FILE, STAGES, ImageFeatures, RetrievalEngine, build_index
from fgia.retrieval.search import Ranking
from fgia.retrieval.system import SystemConfig, coarse_accuracy_table, l2_normalize, load_aux_embeddings, train_system
from fgia.runtime import pick_device, seed_everything

DEMO_CONFIG = "demo.yaml"
OSFGIR_CONFIG = "osfgir.yaml"


@dataclass
class OsfgirConfig:
    """One OSFGIR run.

    Data: `data` is a dataset folder/manifest whose samples carry a meta-category (e.g. `fgia synth` output),
    or a folder laid out like the shared real-image composite (cub100/, stanford_cars/, flowers102_partial/);
    with no `data`, the synthetic benchmark `synth` is generated into `out_dir/data`. Unlabelled images of
    the data (distractors) join the database. `baseline_weights` initialise the single-stage GAP baseline
    (default: the system's `weights`). `timing_queries` single-query searches feed Table 6; the first
    `examples` of them go to the HTML report.
    """

    data: Path | None = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    factory: str = "Flat"
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


def run_osfgir(cfg: OsfgirConfig, progress: bool = True, console: Console | None = None) -> OsfgirReport:
    """Run the protocol; returns the report (also written to `cfg.out_dir`)."""
    console = console or Console()
    started = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "osfgir.yaml")
    seed_everything(cfg.seed)

    console.log("data and split")
    datasets, distractors = load_datasets(cfg, progress)
    s = cfg.split
    split = build_osfgir_split(datasets, s.aux_fraction, s.query_fraction, s.queries_per_class, distractors,
                               cfg.seed, s.max_images_per_class)
    split.save(out / "split")
    console.log(f"training the system on {len(split.auxiliary)} auxiliary images")
    system_dir = train_system(split.auxiliary, cfg.system, out / "system", progress=progress)
    console.log(f"indexing {len(split.database)} database images")
    index_dir = out / "index"
    if (index_dir / ENGINE_FILE).is_file():
        shutil.rmtree(index_dir)  # a previous run's index, built by a system this run has just replaced
    build_index(system_dir, split.database, index_dir, factory=cfg.factory, device=cfg.system.device)
    engine = RetrievalEngine.load(index_dir, device=cfg.system.device)

    console.log(f"querying with {len(split.queries)} images")
    queries = split.queries
    qf = engine.query_features(queries.samples)
    query_labels = np.array(queries.labels)[qf.index]
    query_categories = [queries.samples[i].category for i in qf.index]
    map_rows = _map_table(engine, qf, query_labels, query_categories, _baseline_features(cfg, split, qf.index))
    aux_embedding, aux_targets = load_aux_embeddings(system_dir)
    targets = np.array([engine.system.categories.index(c) for c in query_categories])
    classifier = coarse_accuracy_table(aux_embedding, aux_targets, qf.coarse_full, targets,
                                       cfg.system.classifier_dims, cfg.seed)
    readable = replace(queries, samples=[queries.samples[i] for i in qf.index])
    timings, examples = _timed_queries(engine, readable, cfg.timing_queries, cfg.examples)
    report = OsfgirReport(
        config=to_dict(cfg),
        seed=cfg.seed,
        split=_split_summary(split),
        versions=_versions(cfg.system.device),
        map_rows=map_rows,
        classifier=classifier,
        timings_ms=timings,
        examples=examples,
        elapsed_s=time.perf_counter() - started,
    )
    write_report(report, out)
    return report


def _map_table(
    engine: RetrievalEngine,
    qf: ImageFeatures,
    labels: np.ndarray,
    categories: list[str],
    baseline: tuple[np.ndarray, np.ndarray],
) -> dict[str, dict[str, float]]:
    """mAP over the whole database per pipeline, per query meta-category and over all queries."""
    db_labels = engine.labels()
    full_rankings = {  # single-stage rows rank the whole database exactly
        "Coarse full-d": (qf.coarse_full, engine.arrays["coarse_full"]),
        f"Coarse {qf.coarse.shape[1]}-d": (qf.coarse, engine.arrays["coarse"]),
        "Single-stage GAP": baseline,
    }
    c2f_rankings: dict[str, Ranking] = {
        "C-to-F image-only": engine.rank(qf, "c2f-image"),
        "C-to-F unified": engine.rank(qf, "c2f-unified"),
        "C-to-F full": engine.rank(qf, "c2f"),
        "C-to-F full + QE": engine.rank(qf, "c2f", query_expansion=True),
    }
    cats = np.array(categories)
    groups = {c: cats == c for c in sorted(set(categories))} | {"all": np.ones(len(cats), bool)}
    table: dict[str, dict[str, float]] = {}
    for name, (q, db) in full_rankings.items():
        table[name] = {g: evaluate_retrieval(q[m], labels[m], db, db_labels)["mAP"] for g, m in groups.items()}
    for name, ranking in c2f_rankings.items():
        table[name] = {g: evaluate_rankings(ranking.ids[m], labels[m], db_labels)["mAP"] for g, m in groups.items()}
    return table


def _baseline_features(cfg: OsfgirConfig, split: OsfgirSplit, query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, database) GAP features of the off-the-shelf backbone the system starts from (not trained on AD)."""
    sc = cfg.system
    weights = cfg.baseline_weights or sc.weights
    model = create_model("plain", num_classes=1, backbone=sc.backbone, weights=weights)
    options = {"image_size": sc.image_size, "regions": False, "device": sc.device, "workers": sc.workers}
    db = extract_features(model, split.database.samples, **options)
    if len(db) != len(split.database):
        raise ValueError(f"{len(split.database) - len(db)} database image(s) became unreadable during the run")
    q = extract_features(model, [split.queries.samples[i] for i in query_rows], **options)
    return l2_normalize(q.image), l2_normalize(db.image)


def _timed_queries(
    engine: RetrievalEngine, queries: FineGrainedDataset, n: int, n_examples: int
) -> tuple[dict[str, dict[str, float]], list[QueryExample]]:
    """Table 6 from real single-query searches (full pipeline + QE), and the first few as HTML examples."""
    samples = queries.samples[: max(n, n_examples)]
    if not samples:
        return {}, []
    images = [load_image(s.path) for s in samples]
    engine.search(images[:1], pipeline="c2f", query_expansion=True)  # warm-up: first-call allocations
    results = engine.search(images, top_k=10, pipeline="c2f", query_expansion=True)
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
    return timings, examples


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
    **overrides: Any,
) -> OsfgirReport:
    """The `fgia eval` job: run the protocol from an OsfgirConfig YAML (default: configs/osfgir.yaml with
    `data`, configs/demo.yaml on the synthetic benchmark without), print the tables and where the reports
    are. `overrides` replace top-level OsfgirConfig fields."""
    console = console or Console()
    default = default_config(OSFGIR_CONFIG if data is not None else DEMO_CONFIG)
    cfg = load_yaml(OsfgirConfig, config or default, data=data, out_dir=out_dir, **overrides)
    report = run_osfgir(cfg, progress=progress, console=console)
    print_report(report, console)
    console.print(f"reports: {Path(cfg.out_dir) / 'report.md'}, {Path(cfg.out_dir) / 'report.html'}")
    return report


def run_demo(
    data: Path | None = None,
    out_dir: Path = Path("fgia-out/demo"),
    config: Path | None = None,
    progress: bool = True,
    console: Console | None = None,
    **overrides: Any,
) -> OsfgirReport:
    """The `fgia demo` job: configs/demo.yaml (or `config`) on the synthetic benchmark, or on the real dataset
    folder `data` with the same CPU-sized settings; prints the tables and writes the MD/JSON/HTML reports."""
    return evaluate_osfgir(config or default_config(DEMO_CONFIG), data, out_dir, progress, console, **overrides)
