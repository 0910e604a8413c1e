"""The `fgia` command: datasets, synth, train, index, search, eval, serve, export, bench, demo.

Each sub-command is a thin layer over the Python API; heavy imports happen inside the commands so
`fgia --help` stays fast. Expected failures (bad paths, unreadable data, mismatched index) print one line
and exit non-zero; set FGIA_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup


class _DefaultCommandGroup(TyperGroup):
    """A group whose first sub-command runs when the first argument names none (`fgia index SYS DATA` is
    `fgia index build SYS DATA`, beside `fgia index verify DIR`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
datasets_app = typer.Typer(no_args_is_help=True, help="List supported dataset layouts; inspect or validate a folder.")
bench_app = typer.Typer(no_args_is_help=True, help="Comparison benchmarks that write a Markdown + JSON table.")
index_app = typer.Typer(cls=_DefaultCommandGroup, no_args_is_help=True,
                        help="Index a database (`fgia index SYSTEM DATA --out DIR`) or verify an index.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(bench_app, name="bench")
app.add_typer(index_app, name="index")
console = Console()

DEFAULT_OUT = Path("fgia-out")
FORCE_HELP = "replace a non-empty output folder (files fgia did not write are kept beside it)"
SHARED_HELP = "folder with cub100/, stanford_cars/, flowers102_partial/"


# ----------------------------------------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list() -> None:
    """The dataset layouts fgia reads, with the name to pass as --format."""
    from fgia.data import list_formats

    table = Table("format", "layout")
    for name, description in list_formats():
        table.add_row(name, description)
    console.print(table)


@datasets_app.command("inspect")
def datasets_inspect(
    path: Path = typer.Argument(..., help="dataset folder or manifest CSV"),
    fmt: str = typer.Option("auto", "--format", help="layout name (see `fgia datasets list`)"),
    check_images: bool = typer.Option(False, "--check-images", help="decode every image and list broken ones"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Counts, classes, images per class, splits, annotations (and broken files with --check-images)."""
    from fgia.data import inspect_path

    report = inspect_path(path, fmt=fmt, check_images=check_images, workers=min(8, os.cpu_count() or 1))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(report.render())


@datasets_app.command("validate")
def datasets_validate(
    path: Path = typer.Argument(..., help="dataset folder or manifest CSV"),
    fmt: str = typer.Option("auto", "--format", help="layout name (see `fgia datasets list`)"),
) -> None:
    """Decode every image; exit 1 when any is broken."""
    from fgia.data import inspect_path

    report = inspect_path(path, fmt=fmt, check_images=True, workers=min(8, os.cpu_count() or 1))
    console.print(report.render())
    if report.broken:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------- synth
@app.command()
def synth(
    out: Path = typer.Argument(..., help="output folder (manifest.csv + images/)"),
    categories: int = typer.Option(3, help="meta-categories (birds, cars, food, ...)"),
    species: int = typer.Option(12, help="species per meta-category"),
    images: int = typer.Option(40, help="images per species"),
    size: int = typer.Option(96, help="image side in pixels"),
    difficulty: float = typer.Option(0.5, help="0..1: pose, clutter, occlusion and lighting variation"),
    distractors: int = typer.Option(0, help="unlabelled distractor images"),
    seed: int = typer.Option(0),
    workers: int | None = typer.Option(None, help="processes (default: all cores)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Generate the synthetic fine-grained benchmark in the CSV-manifest layout."""
    from fgia.data.synthetic import SynthConfig, generate_benchmark

    cfg = SynthConfig(categories=categories, species_per_category=species, images_per_species=images,
                      image_size=size, difficulty=difficulty, distractors=distractors, seed=seed)
    manifest = generate_benchmark(cfg, out, workers=workers, force=force)
    console.print(f"wrote {cfg.num_images} images: {manifest}")


# ----------------------------------------------------------------------------------------------- train
@app.command()
def train(
    data: Path | None = typer.Argument(None, help="auxiliary set: a labelled dataset folder or manifest CSV"),
    aux: list[str] | None = typer.Option(None, "--aux", help="NAME=PATH: a labelled dataset as meta-category NAME; "
                                         "repeat to compose several (instead of DATA)"),
    category: str | None = typer.Option(None, help="meta-category name for DATA (default: its folder name when "
                                        "the data has none)"),
    out: Path = typer.Option(DEFAULT_OUT / "system", help="system folder to write"),
    config: Path | None = typer.Option(None, help="SystemConfig YAML, or a run config with a `system:` section "
                                       "and optionally a `datasets:` list of {category, path[, format]} (paths "
                                       "relative to the current folder); default: the recipe measured on real "
                                       "photos (configs/real.yaml: EfficientNet-Lite0, 160 px)"),
    backbone: str | None = typer.Option(None, help="timm backbone name (default: the one the weights fit)"),
    weights: str | None = typer.Option(None, help="'hub', a .pth/.safetensors file, or efficientnet-lite0/1/2"),
    epochs: int | None = typer.Option(None),
    image_size: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, help="lower it for a small auxiliary set"),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    codes: str | None = typer.Option(None, help="also train a hashing model for these code lengths, e.g. 12,24,48"),
    force: bool = typer.Option(False, "--force", help=f"{FORCE_HELP}; indexes built with a replaced system "
                               "stop loading"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or log lines"),
) -> None:
    """Train an OSFGIR system on an auxiliary set: unified (+ per-category) CN-Nets, PCAs, coarse classifier.

    One labelled set without meta-categories trains a one-category system; `--aux birds=cub/ --aux cars=cars/`
    (or a config's `datasets:` list) composes labelled sets into meta-categories. To train a single model from a
    TrainConfig YAML (also under torchrun), use `python -m fgia.train`.
    """
    from fgia.retrieval.system import train_system

    hash_bits = [int(b) for b in codes.split(",")] if codes else None
    cfg = _system_config(config, backbone=backbone, weights=weights, epochs=epochs, image_size=image_size,
                         batch_size=batch_size, device=device, hash_bits=hash_bits)
    auxiliary = _auxiliary_set(data, aux or [], category, config)
    system_dir = train_system(auxiliary, cfg, out, progress=not quiet, force=force)
    console.print(f"system written to {system_dir}")


def _auxiliary_set(data: Path | None, aux: list[str], category: str | None, config: Path | None):
    """The labelled set to train on: DATA (tagged `category`), or the composite of `--aux` / the config's
    `datasets:`."""
    from fgia.config import from_dict
    from fgia.data import (
        DatasetSpec,
        labelled_set,
        merge_categories,
        parse_dataset_spec,
        read_composite,
        read_dataset,
    )

    specs = [parse_dataset_spec(a) for a in aux]
    specs = specs or [from_dict(DatasetSpec, d) for d in _yaml(config).get("datasets", [])]
    if (data is None) == (not specs):
        raise typer.BadParameter("give the auxiliary set as DATA, or as --aux NAME=PATH (or a config's `datasets:`), "
                                 "not both and not neither")
    if specs:
        if category is not None:
            raise typer.BadParameter("--category names DATA's meta-category; with --aux, NAME is the category")
        return merge_categories(read_composite(specs))
    return labelled_set(read_dataset(data, category=category), category or data.resolve().stem)


def _yaml(path: Path | None) -> dict:
    import yaml

    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path is not None else {}


def _system_config(path: Path | None, **overrides):
    """A SystemConfig from YAML (a whole run config such as configs/demo.yaml gives its `system:` section; without
    one, the recipe measured on real photos, configs/real.yaml); efficientnet-liteN weights choose their backbone
    unless one is chosen (on the command line or in the given YAML)."""
    import re

    from fgia.config import from_dict
    from fgia.eval.osfgir import default_config
    from fgia.retrieval.system import SystemConfig

    data = _yaml(path or default_config("real.yaml"))
    data = dict(data.get("system", {} if "datasets" in data else data))
    chosen_backbone = overrides.get("backbone") is not None or (path is not None and "backbone" in data)
    data.update({k: v for k, v in overrides.items() if v is not None})
    lite = re.fullmatch(r"efficientnet-lite(\d)", str(data.get("weights")))
    if lite and not chosen_backbone:
        data["backbone"] = f"tf_efficientnet_lite{lite.group(1)}"
    return from_dict(SystemConfig, data)


# ----------------------------------------------------------------------------------------------- index
@index_app.command("build")
def index(
    system: Path = typer.Argument(..., help="system folder written by `fgia train`"),
    data: Path = typer.Argument(..., help="database images: any folder tree of images (unlabelled), or a labelled "
                                "dataset folder or manifest"),
    out: Path = typer.Option(DEFAULT_OUT / "index", help="index folder"),
    append: bool = typer.Option(False, "--append", help="add to an existing index built with the same system "
                                "(images already in it are skipped)"),
    factory: str = typer.Option("Flat", help="FAISS factory string for the coarse index, e.g. Flat, IVF256,Flat, "
                                "HNSW32 (Milvus: Flat, IVF<n>,Flat, IVF<n>,SQ8, IVF<n>,PQ<m>, HNSW<M>)"),
    search_params: str = typer.Option("", help="search-time knobs of the coarse index, saved with it: nprobe=32 "
                                      "(IVF; FAISS probes 1 list by default), efSearch=128 (HNSW)"),
    codes: int | None = typer.Option(None, help="also store BITS-bit binary codes (a system trained with --codes)"),
    hash_factory: str = typer.Option("BFlat", help="FAISS binary factory for the codes, e.g. BFlat, BIVF256"),
    store: str = typer.Option("faiss", help="where vectors live: faiss (files in --out), milvus:///abs/path/x.db "
                              "(Milvus Lite) or milvus://host:19530 (a Milvus server); --out then holds the pointer"),
    engine: str = typer.Option("local", help="feature extraction: local (this process) or ray (Ray Data actors)"),
    ray_address: str | None = typer.Option(None, help="with --engine ray: a running Ray cluster ('auto', "
                                           "'ray://host:10001'); default: a local Ray on this machine"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    fmt: str = typer.Option("auto", "--format", help="layout name (`fgia datasets list`); `images` reads class "
                            "folders as plain folders, without labels"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Extract and store every stage's features of a database, then index them (the default sub-command)."""
    from fgia.data import read_dataset
    from fgia.retrieval.engine import build_index

    database = read_dataset(data, fmt)
    result = build_index(system, database, out, append=append, factory=factory, force=force, progress=not quiet,
                         codes=codes, hash_factory=hash_factory, store=store, engine=engine, ray_address=ray_address,
                         search_params=search_params)
    labelled = sum(s.label >= 0 for s in database.samples)
    console.print(f"index {result.index_dir}: added {result.added} images ({result.skipped} unreadable, "
                  f"{result.duplicates} already indexed skipped), {result.total} in total; "
                  + (f"{labelled} labelled" if labelled else
                     "unlabelled: search works, mAP and R@K evaluation need labels"), soft_wrap=True)


@index_app.command("verify")
def index_verify(
    index_dir: Path = typer.Argument(..., help="index folder written by `fgia index`"),
    device: str = typer.Option("auto"),
) -> None:
    """Check every file of an index against its manifest (sizes and checksums) and load it with its system."""
    from fgia.index import FeatureStore
    from fgia.retrieval.engine import RetrievalEngine

    engine = RetrievalEngine.load(index_dir, device=device, verify=True)
    checked = (f"{len(engine.store.manifest['files'])} files match their checksums"
               if isinstance(engine.store, FeatureStore) else f"every Milvus collection at {engine.store.uri} holds them")
    console.print(f"index {index_dir}: ok ({len(engine)} images, {checked})", soft_wrap=True)


# ----------------------------------------------------------------------------------------------- search
@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="index folder written by `fgia index`"),
    images: list[Path] = typer.Argument(..., help="query image(s)"),
    top_k: int = typer.Option(10, help="results per query"),
    pipeline: str = typer.Option("c2f", help="c2f (coarse-to-fine), c2f-image, c2f-unified, coarse, coarse-full, "
                                 "unified, hash or c2f-hash (an index built with --codes)"),
    qe: bool = typer.Option(False, "--qe", help="query expansion"),
    json_out: Path | None = typer.Option(None, "--json", help="write the ranked lists as JSON here (a symlink is "
                                         "written through, a FIFO written to)"),
    device: str = typer.Option("auto"),
) -> None:
    """Rank the database for each query image."""
    from fgia.data import load_image
    from fgia.retrieval.engine import RetrievalEngine

    engine = RetrievalEngine.load(index_dir, device=device)
    queries = [load_image(p) for p in images]
    results = engine.search(queries, top_k=top_k, pipeline=pipeline, query_expansion=qe)
    payload = [{"query": str(p), **r.to_dict()} for p, r in zip(images, results)]
    if json_out is not None:
        from fgia.runtime import atomic_write_text

        atomic_write_text(json_out, json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")
        return
    for item in payload:
        table = Table("rank", "distance", "label", "path", title=f"{item['query']} -> {item['category']}")
        for rank, (dist, label, path) in enumerate(zip(item["distances"], item["labels"] or [None] * len(
                item["paths"]), item["paths"]), start=1):
            table.add_row(str(rank), f"{dist:.4f}", label or "", path)
        console.print(table)


# ----------------------------------------------------------------------------------------------- eval
@app.command("eval")
def evaluate(
    task: str = typer.Option("osfgir", help="osfgir (the full protocol), classify, or fewshot"),
    config: Path | None = typer.Option(None, help="OsfgirConfig YAML (osfgir task), FewShotBenchConfig YAML (fewshot "
                                       "task without --model)"),
    data: Path | None = typer.Option(None, help="dataset folder/manifest (default: the synthetic benchmark)"),
    model: Path | None = typer.Option(None, help="model folder (classify task; fewshot task: evaluate this model's "
                                      "embedding instead of meta-training)"),
    out: Path = typer.Option(DEFAULT_OUT / "eval", help="report folder"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Run an evaluation protocol and write a Markdown + JSON report."""
    if task == "fewshot" and model is None:
        if data is None:
            raise typer.BadParameter("--task fewshot needs --data")
        from fgia.eval.fewshot import run_fewshot_eval

        run_fewshot_eval(data, out, config, force=force)
        return
    if task in ("classify", "fewshot"):
        if model is None or data is None:
            raise typer.BadParameter(f"--task {task} needs --model and --data")
        if task == "classify":
            from fgia.eval.classify import classify_checkpoint, format_classification

            console.print(format_classification(classify_checkpoint(model, data)))
        else:
            from fgia.eval.fewshot import few_shot_checkpoint, format_few_shot

            console.print(format_few_shot(few_shot_checkpoint(model, data)))
        return
    if task != "osfgir":
        raise typer.BadParameter(f"unknown task {task!r}: use osfgir, classify or fewshot")
    from fgia.eval.osfgir import evaluate_osfgir

    evaluate_osfgir(config=config, data=data, out_dir=out, force=force)


# ----------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    index_dir: Path = typer.Argument(..., help="index folder written by `fgia index`"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    device: str = typer.Option("auto"),
    verify: bool = typer.Option(False, "--verify", help="check every index file's checksum before serving"),
) -> None:
    """Serve the search API and the web page for an index."""
    from fgia.serve import run

    run(index_dir, host=host, port=port, device=device, verify=verify)


# ----------------------------------------------------------------------------------------------- export
@app.command()
def export(
    system: Path = typer.Argument(..., help="system folder written by `fgia train`"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (for onnxruntime and others) or torch (torch.export)"),
    out: Path = typer.Option(DEFAULT_OUT / "export", help="export folder (outside the system folder)"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty folder that holds no export"),
) -> None:
    """Export the system's extraction networks (shared trunk + every model, one graph) with an export.json that
    says how to preprocess images and what each output is."""
    from fgia.retrieval.export import export_system

    result = export_system(system, out, fmt, force=force)
    console.print(f"exported {result.graph} (described in {result.manifest})")


# ----------------------------------------------------------------------------------------------- bench
@bench_app.command("methods")
def bench_methods(
    shared: Path = typer.Option(Path("../shared/data"), help="folder with cub100/, stanford_cars/, flowers102_partial/"),
    synthetic: bool = typer.Option(False, "--synthetic", help="one zero-shot table on the synthetic benchmark"),
    data: Path | None = typer.Option(None, help="one zero-shot table on this dataset instead of the real survey"),
    methods: str | None = typer.Option(None, help="comma-separated method names (--synthetic / --data; default all)"),
    config: Path | None = typer.Option(None, help="SurveyConfig YAML (MethodsConfig with --synthetic / --data)"),
    results: Path = typer.Option(Path("benchmarks/results"), help="where methods_real_<device>.json/.md go"),
    out: Path = typer.Option(DEFAULT_OUT / "methods.md", help="table to write with --synthetic / --data (.md + .json)"),
) -> None:
    """Survey methods on real images: recognition and zero-shot retrieval per dataset, Table 2, Fig. 5."""
    if synthetic or data is not None:
        from fgia.eval.methods import run_methods_bench

        if synthetic and data is not None:
            raise typer.BadParameter("choose one of --synthetic and --data")
        run_methods_bench(data=data, methods=methods.split(",") if methods else None, config=config, out=out)
        return
    if methods is not None:
        raise typer.BadParameter("--methods applies to --synthetic / --data; the survey takes them from --config")
    from fgia.eval.survey import run_survey

    run_survey(shared, config, results, command="fgia bench methods " + " ".join(sys.argv[3:]))


@bench_app.command("real")
def bench_real(
    shared: Path = typer.Option(Path("../shared/data"), help="folder with cub100/, stanford_cars/, flowers102_partial/"),
    quick: bool = typer.Option(False, "--quick", help="12 images per species, one head: a few minutes"),
    full: bool = typer.Option(False, "--full", help="configs/osfgir.yaml: larger images and models (meant for a GPU)"),
    weights: str | None = typer.Option(None, help="backbone weights (default: the config's, efficientnet-lite0)"),
    results: Path = typer.Option(Path("benchmarks/results"), help="where the Markdown + JSON tables go"),
    work: Path = typer.Option(DEFAULT_OUT / "bench-real", help="where models, index and full report go"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """The real-data OSFGIR benchmark on the whole birds/cars/flowers composite (Tables 4-7, the targets)."""
    from fgia.eval.osfgir import run_real_bench

    if quick and full:
        raise typer.BadParameter("choose one of --quick and --full")
    size = "quick" if quick else "full" if full else "default"
    run_real_bench(shared, size=size, weights=weights, results_dir=results, work_dir=work, force=force)


# ----------------------------------------------------------------------------------------------- explain
@app.command()
def explain(
    model: Path = typer.Argument(..., help="model folder (model.yaml + model.safetensors)"),
    image: Path | None = typer.Argument(None, help="image to explain"),
    out: Path = typer.Option(Path("explain.png"), help="PNG to write"),
    image_size: int | None = typer.Option(None, help="input size (default: the model's training size, else 224)"),
    histogram: Path | None = typer.Option(None, help="dataset: write the Fig. 5 histogram of its map spreads instead"),
    device: str = typer.Option("cpu"),
) -> None:
    """The predicted class's confidence map and region box over IMAGE; or, with --histogram DATA, the spread of the
    model's confidence maps over a dataset (Conv-Net vs Norm-Net for CN-Nets, the paper's Fig. 5)."""
    from fgia.eval import explain as explaining

    if (image is None) == (histogram is None):
        raise typer.BadParameter("give an IMAGE or --histogram DATA (one of them)")
    if image is not None:
        shown = explaining.explain(model, image, out, image_size=image_size, device=device)
        console.print(f"{out}: {shown['class']} (p={shown['probability']:.2f}), box "
                      f"{[round(v) for v in shown['box']]}, map: {shown['map']}")
        return
    from fgia.data import read_dataset

    samples = read_dataset(histogram).samples
    counts = explaining.explain_spreads(model, samples, out, f"confidence-map spread, {len(samples)} images of "
                                        f"{histogram.name}", image_size=image_size, device=device)
    means = ", ".join(f"{name} {head['mean']:.4f}" for name, head in counts["heads"].items())
    console.print(f"{out}: mean map std {means}")


@bench_app.command("hashing")
def bench_hashing(
    shared: Path = typer.Option(Path("../shared/data"), help=SHARED_HELP),
    config: Path | None = typer.Option(None, help="HashingBenchConfig YAML (default: the issue's setting)"),
    quick: bool = typer.Option(False, "--quick", help="10 images per class, one epoch: a few minutes"),
    results: Path = typer.Option(Path("benchmarks/results"), help="where hashing_<device>.json / .md go"),
    cache_dir: Path = typer.Option(DEFAULT_OUT / "trunk-cache", help="lower-trunk cache, shared with other benches"),
) -> None:
    """Learned binary codes (A2-Net-style, DPSH) vs LSH, ITQ and the real-valued embedding, 12-48 bits."""
    from fgia.eval.hashing import HashingBenchConfig, run_hashing_bench

    cfg = _bench_config(HashingBenchConfig, config, cache_dir,
                        {"max_images_per_class": 10, "hash_epochs": 1} if quick else None)
    run_hashing_bench(shared, cfg, results, name="hashing_quick" if quick else "hashing", progress=True)


@bench_app.command("fewshot")
def bench_fewshot(
    shared: Path = typer.Option(Path("../shared/data"), help=SHARED_HELP),
    config: Path | None = typer.Option(None, help="FewShotBenchConfig YAML (default: the issue's setting)"),
    quick: bool = typer.Option(False, "--quick", help="20 images per class, short training, 100 episodes"),
    results: Path = typer.Option(Path("benchmarks/results"), help="where fewshot_<device>.json / .md go"),
    cache_dir: Path = typer.Option(DEFAULT_OUT / "trunk-cache", help="lower-trunk cache, shared with other benches"),
) -> None:
    """Meta-trained few-shot (prototypical, bilinear) vs nearest centroid on frozen and fine-tuned features."""
    from fgia.eval.fewshot import FewShotBenchConfig, run_fewshot_bench

    cfg = _bench_config(FewShotBenchConfig, config, cache_dir, {"max_images_per_class": 20, "episodes": 100} if quick
                        else None)
    if quick:
        cfg.meta.episodes = min(cfg.meta.episodes, 20)
    run_fewshot_bench(shared, cfg, results, name="fewshot_quick" if quick else "fewshot", progress=True)


def _bench_config(cls, path: Path | None, cache_dir: Path, quick: dict | None):
    """A bench config from YAML (or the defaults) with the lower-trunk cache in `cache_dir`; `quick`: the options
    of the few-minute version (the recipe then trains one epoch)."""
    from dataclasses import replace

    from fgia.config import load_yaml

    cfg = load_yaml(cls, path) if path is not None else cls()
    cfg = replace(cfg, recipe=replace(cfg.recipe, cache_dir=cache_dir))
    if quick is not None:
        cfg = replace(cfg, recipe=replace(cfg.recipe, epochs=1), **quick)
    return cfg


# ----------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    data: Path | None = typer.Option(None, help="a real dataset folder (default: generate the synthetic one); with "
                                     "--aux, the database to search: any folder tree of images, labels optional"),
    aux: list[str] | None = typer.Option(None, "--aux", help="NAME=PATH: a labelled auxiliary set as meta-category "
                                         "NAME (repeat to compose several); --data is then the database"),
    out: Path = typer.Option(DEFAULT_OUT / "demo", help="where data, models, index and report go"),
    config: Path | None = typer.Option(None, help="OsfgirConfig YAML (default: configs/demo.yaml values)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Generate data, train, index, evaluate, print the tables and write an HTML report."""
    from fgia.data import parse_dataset_spec
    from fgia.eval.osfgir import run_demo

    if not aux:
        run_demo(data=data, out_dir=out, config=config, force=force)
        return
    if data is None:
        raise typer.BadParameter("--aux trains on labelled sets: give the database to search with --data")
    specs = [parse_dataset_spec(a) for a in aux]
    for spec in specs:
        spec.path = spec.path.resolve()
    run_demo(out_dir=out, config=config, database=data, datasets=specs, force=force)


class _NoticeHandler(logging.Handler):
    """Notices about outputs (kept files, resumed builds) as `fgia: ...` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        Console(stderr=True).print(Text(f"fgia: {record.getMessage()}"), highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- generate
generate_app = typer.Typer(no_args_is_help=True,
                           help="Class-conditional image generation (CVAE-GAN): train, sample, interpolate.")
app.add_typer(generate_app, name="generate")


@generate_app.command("train")
def generate_train(
    data: Path = typer.Argument(..., help="dataset folder or manifest (labelled images)"),
    out: Path = typer.Option(DEFAULT_OUT / "gen", help="generator folder to write"),
    config: Path | None = typer.Option(None, help="GenerativeConfig YAML"),
    kind: str | None = typer.Option(None, help="cvaegan (default), or a baseline: cgan, cvae"),
    steps: int | None = typer.Option(None, help="training steps"),
    image_size: int | None = typer.Option(None, help="image side: 64 (default) or 128 (meant for a GPU)"),
    width: int | None = typer.Option(None, help="base channel width of every network"),
    batch_size: int | None = typer.Option(None),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    fmt: str = typer.Option("auto", "--format", help="layout name (see `fgia datasets list`)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the folder's checkpoint"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty folder that holds no generator"),
) -> None:
    """Train a class-conditional generator; the folder gets generator.yaml (resolved config), weights,
    history and a resumable checkpoint."""
    import yaml

    from fgia.config import from_dict
    from fgia.data import read_dataset
    from fgia.train.generative import (
        GenerativeConfig,
        check_output_dir,
        train_generator,
    )

    check_output_dir(out, force)  # before decoding any image
    values = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}) if config is not None else {}
    arch = dict(values.pop("arch", None) or {})
    arch.update({k: v for k, v in {"image_size": image_size, "width": width}.items() if v is not None})
    values.update({k: v for k, v in {"kind": kind, "steps": steps, "batch_size": batch_size, "device": device,
                                     "resume": resume or None}.items() if v is not None})
    cfg = from_dict(GenerativeConfig, {**values, "arch": arch})
    _, trainer = train_generator(read_dataset(data, fmt), cfg, out, force=force)
    console.print(f"{cfg.kind} generator ({trainer.step} steps, {len(trainer.data)} images) written to {out}")


@generate_app.command("sample")
def generate_sample(
    generator: Path = typer.Argument(..., help="generator folder written by `fgia generate train`"),
    classes: list[str] = typer.Option(..., "--class", help="class name (repeat for several rows)"),
    n: int = typer.Option(16, "--n", help="images per class"),
    out: Path = typer.Option(Path("grid.png"), help="PNG file to write"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
) -> None:
    """Generate `n` images of each named class as one PNG grid (a row per class)."""
    from fgia.eval.generation import write_samples

    console.print(f"wrote {write_samples(generator, classes, n, out, seed, device)}")


@generate_app.command("interpolate")
def generate_interpolate(
    generator: Path = typer.Argument(..., help="generator folder written by `fgia generate train`"),
    from_class: str = typer.Option(..., "--from", help="class name at the left"),
    to_class: str = typer.Option(..., "--to", help="class name at the right"),
    steps: int = typer.Option(8, help="images per row"),
    rows: int = typer.Option(4, help="rows, each with its own latent z"),
    out: Path = typer.Option(Path("interpolation.png"), help="PNG file to write"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
) -> None:
    """Move the class code from one class to another with z fixed per row, as one PNG grid."""
    from fgia.eval.generation import write_interpolation

    console.print(f"wrote {write_interpolation(generator, from_class, to_class, steps, rows, out, seed, device)}")


@bench_app.command("generation")
def bench_generation(
    shared: Path = typer.Option(Path("../shared/data"), help="folder with flowers102_partial/ and cub100/"),
    full: bool = typer.Option(False, "--full", help="bigger models, more steps and features at 224 px (a GPU)"),
    config: Path | None = typer.Option(None, help="GenerationBenchConfig YAML (default: configs/generation.yaml)"),
    results: Path = typer.Option(Path("benchmarks/results"), help="where the Markdown + JSON + PNG go"),
    work: Path = typer.Option(DEFAULT_OUT / "bench-generation", help="where the trained generators go"),
) -> None:
    """CVAE-GAN vs a plain baseline on Flowers and CUB-100: FD, KID, class consistency, few-shot augmentation."""
    from fgia.eval.generation import run_generation_bench

    run_generation_bench(shared, full=full, config=config, results_dir=results, work_dir=work)


def main() -> None:
    """Entry point: run the CLI, turning expected failures into a one-line error."""
    notices = logging.getLogger("fgia.runtime")
    if not any(isinstance(h, _NoticeHandler) for h in notices.handlers):
        notices.addHandler(_NoticeHandler(logging.WARNING))
        notices.propagate = False
    try:
        # Without standalone mode click returns a command's exit code instead of raising it.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, never a traceback
        if os.environ.get("FGIA_DEBUG"):
            raise
        message = Text.assemble(("fgia: error: ", "red"), f"{type(exc).__name__}: {exc}")  # no markup parsing
        Console(stderr=True).print(message, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
