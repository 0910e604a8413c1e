"""The OSFGIR protocol end to end: data -> split -> train on AD -> index D -> query -> the paper's tables.

`run_osfgir(cfg)` does one run and writes into `cfg.out_dir`: the resolved config (osfgir.yaml), the split,
the system, the index and report.md / report.json / report.html. `run_demo` is the `fgia demo` job: the
packaged default config (configs/demo.yaml) on the synthetic benchmark, or on a real dataset folder.
"""

from __future__ import annotations

import json
import platform
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
    DatasetSpec,
    FineGrainedDataset,
    OsfgirSplit,
    build_osfgir_split,
    load_image,
    read_composite,
    read_dataset,
)
from fgia.data import OsfgirConfig as SplitConfig
from fgia.data.compose import default_category
from fgia.data.protocols import SHARED_COMPOSITE, database_split
from fgia.data.readers import ACCEPTED, DatasetError
from fgia.data.samples import Sample
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.eval.methods import MethodEmbedder, MethodsConfig, parse_method
from fgia.eval.report import (
    Hit,
    OsfgirReport,
    QueryExample,
    print_report,
    to_markdown,
    write_report,
)
from fgia.features.extract import extract_models
from fgia.metrics import evaluate_rankings
from fgia.results import target
from fgia.retrieval.engine import (
    STAGES,
    ImageFeatures,
    Pipeline,
    RetrievalEngine,
    build_index,
)
from fgia.retrieval.search import knn
from fgia.retrieval.system import (
    SYSTEM_FILE,
    SystemConfig,
    coarse_accuracy_table,
    conv_feature,
    load_aux_embeddings,
    train_system,
    unified_model,
)
from fgia.runtime import atomic_write_text, output_folder, pick_device, seed_everything
from fgia.train import UNIFIED

DEMO_CONFIG = "demo.yaml"
OSFGIR_CONFIG = "osfgir.yaml"
OSFGIR_KIND = "osfgir run"


@dataclass
class OsfgirConfig:
    """One OSFGIR run.

    Data: `datasets` composes labelled sets into meta-categories ({category, path[, format]}; relative paths
    from `data`); else `data` is a labelled dataset folder/manifest (its samples' meta-categories, or one
    category when they have none; e.g. `fgia synth` output), or a folder laid out like the shared real-image
    composite (cub100/, stanford_cars/, flowers102_partial/); with neither, the synthetic benchmark `synth` is
    generated into `out_dir/data`. Unlabelled images of the data (distractors) join the database. With
    `database` (a user's own images, any folder tree, labels optional), every labelled species trains and the
    database is searched instead, its queries drawn from it (`database_split`); metrics that need labels are
    left empty when it has none. `baselines` are single-stage methods on the same split and
    backbone, named as in `fgia bench methods` ("gap-offtheshelf", "scda-offtheshelf", "plain" = the plain
    backbone fine-tuned on AD, ...); `baseline_weights` initialise them (default: the system's `weights`).
    `timing_queries` single-query searches feed Table 6; the first `examples` of them go to the HTML report.
    """

    data: Path | None = None
    datasets: list[DatasetSpec] = field(default_factory=list)
    database: Path | None = None
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
    if cfg.datasets:
        return read_composite(cfg.datasets, cfg.data), None
    if cfg.data is None:
        manifest = generate_benchmark(cfg.synth, Path(cfg.out_dir) / "data", progress=progress)
        return split_by_category(read_dataset(manifest))
    root = Path(cfg.data)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if root.is_dir() and any((root / spec.path).is_dir() for spec in SHARED_COMPOSITE):
        return read_composite(SHARED_COMPOSITE, root), None
    return split_by_category(read_dataset(root))


def split_by_category(ds: FineGrainedDataset) -> tuple[dict[str, FineGrainedDataset], FineGrainedDataset | None]:
    """Labelled samples per meta-category (one category, named after the data's folder, when no sample has
    one), and the unlabelled ones (None when there are none)."""
    labelled = [s for s in ds.samples if s.label >= 0]
    if not labelled:
        raise DatasetError(f"{ds.root} has no labelled images: it is a database. Train on labelled auxiliary sets "
                           f"(`fgia demo --data DATABASE --aux NAME=PATH`, a config's `datasets:`). {ACCEPTED}")
    if all(s.category is None for s in labelled):
        name = default_category(ds)
        ds = replace(ds, samples=[replace(s, category=name) if s.label >= 0 else s for s in ds.samples])
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
    if cfg.database is not None:
        split = database_split(datasets, read_dataset(cfg.database), s.query_fraction, cfg.seed)
    else:
        split = build_osfgir_split(datasets, s.aux_fraction, s.query_fraction, s.queries_per_class, distractors,
                                   cfg.seed, s.max_images_per_class)
    split.save(out / "split")
    console.log(f"training the system on {len(split.auxiliary)} auxiliary images")
    system_dir = train_system(split.auxiliary, cfg.system, out / "system", progress=progress, console=console)
    system_info = json.loads((system_dir / SYSTEM_FILE).read_text(encoding="utf-8"))
    console.log(f"indexing {len(split.database)} database images")
    index_dir = out / "index"
    index_started = time.perf_counter()
    build_index(system_dir, split.database, index_dir, factory=cfg.factory, device=cfg.system.device,
                progress=progress)
    index_s = time.perf_counter() - index_started
    engine = RetrievalEngine.load(index_dir, device=cfg.system.device)

    console.log(f"querying with {len(split.queries)} images")
    queries = split.queries
    qf = engine.query_features(queries.samples, progress=progress)
    query_labels = np.array(queries.labels)[qf.index]
    query_categories = [queries.samples[i].category for i in qf.index]
    latency, timings, examples = _timed_queries(engine, queries, cfg.timing_queries, cfg.examples)
    system_cfg = engine.system.config
    facts = {"backbone": system_cfg.backbone, "weights": system_cfg.weights, "input_size": system_cfg.image_size,
             "epochs": system_cfg.epochs, "head": system_cfg.head, "split_seed": split.seed,
             "trainable": _trainable(engine.system.models[UNIFIED])}
    rows = _pipeline_rows(engine, qf, query_labels, query_categories, latency, facts)
    console.log(f"single-stage baselines: {', '.join(cfg.baselines)}")
    indexed = [split.database.samples[i] for i in indexed_samples(engine, split.database)]
    rows += _baseline_rows(cfg, split.auxiliary, [queries.samples[i] for i in qf.index], indexed, query_labels,
                           query_categories, engine.labels(), facts)
    classifier = {}  # it needs the queries' meta-categories, which a user's own database does not have
    if all(c in engine.system.categories for c in query_categories):
        aux_embedding, aux_targets = load_aux_embeddings(system_dir)
        targets = np.array([engine.system.categories.index(c) for c in query_categories])
        conv = conv_feature(engine.system.models[UNIFIED], qf.unified)
        classifier = coarse_accuracy_table(aux_embedding, aux_targets, conv, targets, cfg.system.classifier_dims,
                                           cfg.seed)
    report = OsfgirReport(
        config=to_dict(cfg),
        seed=cfg.seed,
        split=_split_summary(split),
        versions=_versions(cfg.system.device),
        rows=rows,
        classifier=classifier,
        timings_ms=timings,
        examples=examples,
        selection=system_info.get("selection"),
        seconds={**system_info["seconds"], "index": index_s},
        elapsed_s=time.perf_counter() - started,
    )
    write_report(report, out)
    return report


PIPELINE_ROWS = {  # report row -> (pipeline, query expansion, label)
    "coarse-32d": (Pipeline.COARSE, False, "Coarse {coarse_dim}-d"),
    "coarse-full": (Pipeline.COARSE_FULL, False, "Coarse full-d"),
    "unified": (Pipeline.UNIFIED, False, "Unified"),
    "c2f-image": (Pipeline.C2F_IMAGE, False, "C-to-F, routed model, image only"),
    "c2f-unified": (Pipeline.C2F_UNIFIED, False, "C-to-F, unified model"),
    "c2f": (Pipeline.C2F, False, "C-to-F (the system's pipeline)"),
    "c2f+qe": (Pipeline.C2F, True, "C-to-F + QE"),
}


def _pipeline_rows(
    engine: RetrievalEngine, qf: ImageFeatures, labels: np.ndarray, categories: list[str],
    latency: dict[str, float], facts: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per pipeline the system supports, each ranking the whole database (`rank(..., full=True)`)."""
    db_labels = engine.labels()
    dims = {"coarse-32d": engine.system.coarse_pca.n_components, "unified": qf.unified.shape[1],
            "coarse-full": conv_feature(engine.system.models[UNIFIED], qf.unified).shape[1],
            "c2f-image": engine.system.part_pcas[UNIFIED][0].n_components}
    rows = []
    for name, (pipeline, qe, label) in supported_rows(engine).items():
        ranking = engine.rank(qf, pipeline, query_expansion=qe, full=True)
        scores = _group_scores(ranking.ids, labels, categories, db_labels)
        rows.append({"method": name, "label": label.format(coarse_dim=dims["coarse-32d"]), **facts,
                     "dim": dims.get(name, engine.system.fine_dim), **scores, "ms_per_query": latency.get(name)})
    return rows


def supported_rows(engine: RetrievalEngine) -> dict[str, tuple[Pipeline, bool, str]]:
    """The pipeline rows this system has (no QE row when validation dropped query expansion, no image-only row
    when the fine feature has no region part)."""
    cfg = engine.system.config
    return {name: spec for name, spec in PIPELINE_ROWS.items()
            if not (spec[1] and not cfg.qe_top) and not (name == "c2f-image" and not cfg.regions)}


def _group_scores(ranked_ids: np.ndarray, labels: np.ndarray, categories: list[str],
                  db_labels: np.ndarray) -> dict[str, Any]:
    """mAP and R@1 over the labelled queries, and mAP per query meta-category, from full rankings of database ids
    (None without labelled queries: these metrics need labels)."""
    labelled = labels >= 0
    if not labelled.any():
        return {"mAP": None, "R@1": None, "per_category": {}}
    ranked_ids, labels = ranked_ids[labelled], labels[labelled]
    categories = [str(c) for c, keep in zip(categories, labelled) if keep]
    cats = np.array(categories)
    per_category = {c: evaluate_rankings(ranked_ids[cats == c], labels[cats == c], db_labels, ks=(1,))["mAP"]
                    for c in sorted(set(categories))}
    overall = evaluate_rankings(ranked_ids, labels, db_labels, ks=(1,))
    return {"mAP": overall["mAP"], "R@1": overall["R@1"], "per_category": per_category}


def _trainable(model: Any) -> str:
    frozen = getattr(model, "frozen_stages", 0)
    return f"stages after the first {frozen} + heads" if frozen else "all"


BASELINE_NAMES = {"plain": "plain-finetuned"}


def indexed_samples(engine: RetrievalEngine, database: FineGrainedDataset) -> list[int]:
    """Positions in `database` of the engine's images, in the engine's order: the index leaves out unreadable
    images and repeated ones (the same file content under another path), and every method must rank the same
    database."""
    position = {Path(s.path).resolve(): i for i, s in enumerate(database.samples)}
    return [position[engine.image_path(i).resolve()] for i in range(len(engine))]


def _baseline_rows(
    cfg: OsfgirConfig, auxiliary: FineGrainedDataset, query_samples: list[Sample], database: list[Sample],
    labels: np.ndarray, categories: list[str], db_labels: np.ndarray, facts: dict[str, Any],
) -> list[dict[str, Any]]:
    """Single-stage baselines on the same split, backbone and frozen trunk (see `OsfgirConfig.baselines`),
    extracted in one shared pass; ms per query = that method's extraction per image alone + exact search."""
    if not cfg.baselines:
        return []
    sc = cfg.system
    frozen = unified_model(sc, 1).frozen_stages
    methods_cfg = MethodsConfig(
        backbone=sc.backbone, weights=cfg.baseline_weights or sc.weights, image_size=sc.image_size,
        epochs=sc.epochs, batch_size=sc.batch_size, lr=sc.lr, optimizer=sc.optimizer,
        backbone_lr_scale=sc.backbone_lr_scale, label_smoothing=sc.label_smoothing, whiten=False, seed=cfg.seed,
        device=sc.device, workers=sc.workers, model_kwargs={"plain": {"frozen_stages": frozen}},
        train_options=dict(sc.train_options),
    )
    embedder = MethodEmbedder(auxiliary, methods_cfg)
    embedded = embedder.embed_all(cfg.baselines, query_samples, database)
    rows = []
    for method, (q, db) in embedded.items():
        if len(q.index) != len(query_samples) or len(db.index) != len(database):
            raise ValueError(f"{method}: images became unreadable during the run")
        ranking = knn(q.features, db.features, len(db.features))
        ms = _ms_per_image(embedder, method, query_samples[: cfg.timing_queries]) + _ms_search(q.features, db.features)
        name = BASELINE_NAMES.get(method, method)
        trained = parse_method(method)[1] != "offtheshelf"
        rows.append({"method": name, "label": f"Single-stage {name}", **facts,
                     "epochs": facts["epochs"] if trained else 0, "head": "linear" if trained else "none",
                     "trainable": facts["trainable"] if trained else "none", "dim": int(q.features.shape[1]),
                     **_group_scores(ranking.ids, labels, categories, db_labels), "ms_per_query": ms})
    return rows


def _ms_per_image(embedder: MethodEmbedder, method: str, samples: list[Sample]) -> float:
    """Extraction time per image of one method alone."""
    model = embedder.model(method)[0]
    start = time.perf_counter()
    extract_models({method: model}, samples, embedder.spec({method: model}), **embedder.extract)
    return 1000 * (time.perf_counter() - start) / max(1, len(samples))


def _ms_search(queries: np.ndarray, database: np.ndarray) -> float:
    start = time.perf_counter()
    knn(queries, database, 10)
    return 1000 * (time.perf_counter() - start) / max(1, len(queries))


def _timed_queries(
    engine: RetrievalEngine, queries: FineGrainedDataset, n: int, n_examples: int
) -> tuple[dict[str, float], dict[str, dict[str, float]], list[QueryExample]]:
    """Real single-query searches with every pipeline row: its p50 latency (ms, every stage included), Table 6
    from the system's default pipeline (with QE when it has it), and its first few queries as HTML examples."""
    samples = queries.samples[: max(n, n_examples)]
    if not samples:
        return {}, {}, []
    images = [load_image(s.path) for s in samples]
    engine.search(images[:1])  # warm-up: first-call allocations
    runs = {name: [engine.search([image], top_k=10, pipeline=pipeline, query_expansion=qe)[0] for image in images]
            for name, (pipeline, qe, _) in supported_rows(engine).items()}
    latency = {name: float(np.percentile([r.timings_ms["total"] for r in rs[:n]], 50)) for name, rs in runs.items()}
    results = runs["c2f+qe" if "c2f+qe" in runs else "c2f"]
    per_stage = {st: np.array([r.timings_ms[st] for r in results[:n]]) for st in STAGES}
    timings = {
        st: {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}
        for st, v in per_stage.items()
        if len(v)
    }
    examples = []
    for s, r in zip(samples[:n_examples], results):
        name = queries.classes[s.label] if s.label >= 0 else None
        labels = r.labels or [None] * len(r.ids)
        hits = [Hit(path=p, distance=d, correct=None if name is None else lab == name)
                for p, d, lab in zip(r.paths, r.distances, labels)]
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


REAL_SIZES = {"default": ("real.yaml", "real"), "quick": ("real_quick.yaml", "real_quick"),
              "full": ("osfgir.yaml", "real_full")}
"""`fgia bench real` size -> (packaged config, results file stem)."""


def run_real_bench(
    shared: Path,
    size: str = "default",
    weights: str | None = None,
    results_dir: Path = Path("benchmarks/results"),
    work_dir: Path = Path("fgia-out/bench-real"),
    progress: bool = True,
    console: Console | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """`fgia bench real`: the protocol on the shared birds/cars/flowers composite at `shared`: the whole composite
    at CPU size (configs/real.yaml), a few-minute `quick` version, or `full` size (configs/osfgir.yaml, for a GPU).
    Models and index go to `work_dir`; `results_dir/<stem>_<device>.json` gets the rows, split, timings, the
    validation report and the targets of the real-accuracy issue, `.md` the tables. Returns the JSON payload."""
    console = console or Console()
    config_name, stem = REAL_SIZES[size]
    cfg = load_yaml(OsfgirConfig, default_config(config_name), data=shared, out_dir=Path(work_dir) / size)
    if weights is not None:
        cfg.system.weights = weights
    report = run_osfgir(cfg, progress=progress, console=console, force=force)
    print_report(report, console)
    payload = real_bench_payload(report, cfg, shared)
    name = f"{stem}_{pick_device(cfg.system.device).type}"
    atomic_write_text(Path(results_dir) / f"{name}.json", json.dumps(payload, indent=2))
    markdown = to_markdown(report).replace("# OSFGIR report", f"# fgia bench real ({size})\n\n" + _targets_md(payload), 1)
    atomic_write_text(Path(results_dir) / f"{name}.md", markdown)
    console.print(f"results: {Path(results_dir) / name}.md")
    return payload


def real_bench_payload(report: OsfgirReport, cfg: OsfgirConfig, shared: Path) -> dict[str, Any]:
    """The benchmark JSON: rows, split, timings, validation report, config, versions and the targets."""
    gap, unified = report.row("gap-offtheshelf"), report.row("unified")
    default = report.row("c2f+qe") if any(r["method"] == "c2f+qe" for r in report.rows) else report.row("c2f")
    whole = _whole_composite_counts(cfg, shared)
    values = {
        "unified_minus_gap": (unified["mAP"] - gap["mAP"], 0.10, ">="),
        "c2f_minus_gap": (default["mAP"] - gap["mAP"], 0.12, ">="),
        "c2f_minus_unified": (default["mAP"] - unified["mAP"], 0.01, ">="),
        "cars_ratio": (default["per_category"]["cars"] / max(gap["per_category"]["cars"], 1e-12), 2.5, ">="),
        "coarse_accuracy": (report.classifier[str(cfg.system.coarse_dim)], 0.97, ">="),
        "elapsed_s": (report.elapsed_s, 2700.0, "<="),
        "train_s": (report.seconds.get("train", 0.0), 1200.0, "<="),
        "database_images": (report.split["database"], whole["database"], ">="),
        "queries": (report.split["queries"], whole["queries"], ">="),
    }
    targets = {key: target(float(v), float(t), op) for key, (v, t, op) in values.items()}
    return {"targets": targets, "default_pipeline": default["method"], "rows": report.rows, "split": report.split,
            "classifier": report.classifier, "timings_ms": report.timings_ms, "selection": report.selection,
            "seconds": report.seconds, "elapsed_s": report.elapsed_s, "versions": report.versions,
            "config": report.config}


def _whole_composite_counts(cfg: OsfgirConfig, shared: Path) -> dict[str, int]:
    """Database and query sizes of this split drawn over every image of the composite (the targets' reference)."""
    s = cfg.split
    split = build_osfgir_split(read_composite(cfg.datasets or SHARED_COMPOSITE, shared), s.aux_fraction,
                               s.query_fraction, s.queries_per_class, None, cfg.seed, None)
    return {"database": len(split.database), "queries": len(split.queries)}


def _targets_md(payload: dict[str, Any]) -> str:
    lines = ["## Targets", "", "| target | value | threshold | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {t['value']:.4g} | {t['op']} {t['threshold']:.4g} | {'yes' if t['met'] else 'NO'} |"
              for k, t in payload["targets"].items()]
    return "\n".join(lines) + f"\n\nDefault pipeline: `{payload['default_pipeline']}`.\n\n"
