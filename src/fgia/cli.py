"""The `fgia` command: datasets, synth, train, index, search, eval, serve, bench, demo.

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
    data: Path = typer.Argument(..., help="auxiliary set: dataset folder or manifest (samples need a category)"),
    out: Path = typer.Option(DEFAULT_OUT / "system", help="system folder to write"),
    config: Path | None = typer.Option(None, help="SystemConfig YAML, or a run config with a `system:` section"),
    backbone: str | None = typer.Option(None, help="timm backbone name"),
    weights: str | None = typer.Option(None, help="'hub', a .pth/.safetensors file, or efficientnet-lite0/1/2"),
    epochs: int | None = typer.Option(None),
    image_size: int | None = typer.Option(None),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    force: bool = typer.Option(False, "--force", help=f"{FORCE_HELP}; indexes built with a replaced system "
                               "stop loading"),
) -> None:
    """Train an OSFGIR system on an auxiliary set: unified + per-category CN-Nets, PCAs, coarse classifier.

    To train a single model from a TrainConfig YAML (also under torchrun), use `python -m fgia.train`.
    """
    from fgia.data import read_dataset
    from fgia.retrieval.system import train_system

    cfg = _system_config(config, backbone=backbone, weights=weights, epochs=epochs, image_size=image_size,
                         device=device)
    system_dir = train_system(read_dataset(data), cfg, out, force=force)
    console.print(f"system written to {system_dir}")


def _system_config(path: Path | None, **overrides):
    """A SystemConfig from YAML (a whole run config such as configs/demo.yaml gives its `system:` section)."""
    import yaml

    from fgia.config import from_dict
    from fgia.retrieval.system import SystemConfig

    data = {}
    if path is not None:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data = data.get("system", data)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(SystemConfig, data)


# ----------------------------------------------------------------------------------------------- index
@index_app.command("build")
def index(
    system: Path = typer.Argument(..., help="system folder written by `fgia train`"),
    data: Path = typer.Argument(..., help="database images: dataset folder or manifest (labels optional)"),
    out: Path = typer.Option(DEFAULT_OUT / "index", help="index folder"),
    append: bool = typer.Option(False, "--append", help="add to an existing index built with the same system "
                                "(images already in it are skipped)"),
    factory: str = typer.Option("Flat", help="FAISS factory string for the coarse index, e.g. Flat, IVF256,Flat, "
                                "HNSW32 (Milvus: Flat, IVF<n>,Flat, IVF<n>,SQ8, IVF<n>,PQ<m>, HNSW<M>)"),
    store: str = typer.Option("faiss", help="where vectors live: faiss (files in --out), milvus:///abs/path/x.db "
                              "(Milvus Lite) or milvus://host:19530 (a Milvus server); --out then holds the pointer"),
    engine: str = typer.Option("local", help="feature extraction: local (this process) or ray (Ray Data actors)"),
    ray_address: str | None = typer.Option(None, help="with --engine ray: a running Ray cluster ('auto', "
                                           "'ray://host:10001'); default: a local Ray on this machine"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Extract and store every stage's features of a database, then index them (the default sub-command)."""
    from fgia.data import read_dataset
    from fgia.retrieval.engine import build_index

    result = build_index(system, read_dataset(data), out, append=append, factory=factory, force=force, store=store,
                         engine=engine, ray_address=ray_address)
    console.print(f"index {result.index_dir}: added {result.added} images ({result.skipped} unreadable, "
                  f"{result.duplicates} already indexed skipped), {result.total} in total", soft_wrap=True)


@index_app.command("verify")
def index_verify(
    index_dir: Path = typer.Argument(..., help="index folder written by `fgia index`"),
    device: str = typer.Option("auto"),
) -> None:
    """Check every file of an index against its manifest (sizes and checksums) and load it with its system."""
    from fgia.retrieval.engine import RetrievalEngine

    from fgia.index import FeatureStore

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
    pipeline: str = typer.Option("c2f", help="c2f (coarse-to-fine), c2f-image, c2f-unified, or single"),
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
    config: Path | None = typer.Option(None, help="OsfgirConfig YAML (osfgir task)"),
    data: Path | None = typer.Option(None, help="dataset folder/manifest (default: the synthetic benchmark)"),
    model: Path | None = typer.Option(None, help="model folder (classify and fewshot tasks)"),
    out: Path = typer.Option(DEFAULT_OUT / "eval", help="report folder"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Run an evaluation protocol and write a Markdown + JSON report."""
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


# ----------------------------------------------------------------------------------------------- bench
@bench_app.command("methods")
def bench_methods(
    data: Path | None = typer.Option(None, help="dataset (default: the synthetic benchmark)"),
    methods: str | None = typer.Option(None, help="comma-separated method names (default: all)"),
    config: Path | None = typer.Option(None, help="MethodsConfig YAML"),
    out: Path = typer.Option(DEFAULT_OUT / "methods.md", help="table to write (.md + .json)"),
) -> None:
    """Train/evaluate several methods on one zero-shot split and write one comparison table."""
    from fgia.eval.methods import run_methods_bench

    run_methods_bench(data=data, methods=methods.split(",") if methods else None, config=config, out=out)


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


# ----------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    data: Path | None = typer.Option(None, help="a real dataset folder (default: generate the synthetic one)"),
    out: Path = typer.Option(DEFAULT_OUT / "demo", help="where data, models, index and report go"),
    config: Path | None = typer.Option(None, help="OsfgirConfig YAML (default: configs/demo.yaml values)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Generate data, train, index, evaluate, print the tables and write an HTML report."""
    from fgia.eval.osfgir import run_demo

    run_demo(data=data, out_dir=out, config=config, force=force)


class _NoticeHandler(logging.Handler):
    """Notices about outputs (kept files, resumed builds) as `fgia: ...` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        Console(stderr=True).print(Text(f"fgia: {record.getMessage()}"), highlight=False, soft_wrap=True)


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
