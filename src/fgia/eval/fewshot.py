"""Few-shot classification of new species: N-way K-shot episodes, nearest prototype in a feature space.

`few_shot_episodes` scores any features; `few_shot_checkpoint` a saved model's. `bench_fewshot` (`fgia bench
fewshot`, and `fgia eval --task fewshot` without a model) compares, on each dataset's unseen species (the second
half of its classes, `zero_shot_split`):

* "nc-offtheshelf": nearest centroid on the frozen ImageNet GAP features;
* "nc-finetuned": nearest centroid on the learned real-valued embedding (the cosine CN-Nets of the shared recipe,
  `fgia.eval.realdata.Recipe`, trained with cross-entropy on the first half of the classes);
* "protonet": a prototypical network meta-trained by episodes on the first half (`fgia.train.episodic`);
* "protonet-bilinear": the same with the second-order (bilinear) pooling head (`fgia.models.fewshot`);
* "protonet-pretrained": the "nc-finetuned" embedding meta-trained further by the same episodes (classification
  pre-training, then a prototypical meta stage: Meta-Baseline, Chen et al., ICCV 2021), at its own `pretrained_meta`
  setting (a lower learning rate: the embedding is already trained);

in 5-way 1-shot and 5-shot and all-way episodes (every unseen class with enough images), each with a 95 %
confidence interval over `episodes` episodes (the same episodes for every method).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn
from scipy import stats

from fgia.config import load_yaml, to_dict
from fgia.data import read_dataset, zero_shot_split
from fgia.data.samples import FineGrainedDataset
from fgia.eval.realdata import (
    SHARED_DATASETS,
    Recipe,
    embed,
    epoch_logger,
    machine,
    run_shared_bench,
    timed_shared_cache,
)
from fgia.features.extract import extract_features
from fgia.features.pca import l2_normalize
from fgia.models import create_model, load_model, save_model
from fgia.models.spec import model_spec
from fgia.results import target
from fgia.runtime import atomic_write_text, output_folder, pick_device, seed_everything
from fgia.train.cache import TrunkCache
from fgia.train.episodic import EpisodeSampler, EpisodicConfig, meta_train
from fgia.train.trainer import fit


@dataclass
class FewShotConfig:
    """Episode shape: `n_way` classes, `k_shot` labelled and `n_query` test images per class, `episodes` runs."""

    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    episodes: int = 600
    seed: int = 0
    image_size: int | None = None  # None: the model's spec (the size it was trained at)
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"


def few_shot_episodes(features: np.ndarray, labels: np.ndarray, n_way: int = 5, k_shot: int = 1,
                      n_query: int = 15, episodes: int = 600, seed: int = 0) -> tuple[float, float]:
    """Mean accuracy and 95% confidence half-width over random N-way K-shot episodes.

    Each episode draws `n_way` classes with at least k_shot + n_query images, K support and `n_query`
    query images per class (`fgia.train.episodic.EpisodeSampler`); a query takes the class of the nearest
    prototype (mean of the L2-normalised support features, Euclidean distance). Unlabelled samples (label -1)
    are ignored.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (N, D) with one label each, got {x.shape} and {len(y)} labels")
    if min(n_way, k_shot, n_query, episodes) < 1 or n_way < 2:
        raise ValueError(f"need n_way >= 2 and k_shot, n_query, episodes >= 1; got {n_way}, {k_shot}, "
                         f"{n_query}, {episodes}")
    sampler = EpisodeSampler(y, n_way, k_shot, n_query, seed)
    x = l2_normalize(x)
    squared_norms = (x**2).sum(1)
    truth = np.repeat(np.arange(n_way), n_query)
    accuracies = np.empty(episodes)
    for e in range(episodes):
        support, query = sampler.sample()
        prototypes = x[support].mean(axis=1)
        queries = query.ravel()
        # ||q - p||^2 without the (queries, prototypes, dim) difference array: all-way episodes stay small
        dist = squared_norms[queries, None] - 2 * x[queries] @ prototypes.T + (prototypes**2).sum(1)[None]
        accuracies[e] = (dist.argmin(axis=1) == truth).mean()
    half_width = stats.t.ppf(0.975, episodes - 1) * accuracies.std(ddof=1) / np.sqrt(episodes) if episodes > 1 else 0.0
    return float(accuracies.mean()), float(half_width)


def few_shot_report(features: np.ndarray, labels: np.ndarray, cfg: FewShotConfig,
                    shots: tuple[int, ...] = (1, 5)) -> dict[str, tuple[float, float]]:
    """`few_shot_episodes` for each K in `shots`: {"5-way 1-shot": (mean, ci95), ...}."""
    return {
        f"{cfg.n_way}-way {k}-shot": few_shot_episodes(features, labels, cfg.n_way, k, cfg.n_query, cfg.episodes,
                                                       cfg.seed)
        for k in shots
    }


def few_shot_checkpoint(model_dir: str | os.PathLike, data: str | os.PathLike, cfg: FewShotConfig | None = None,
                        shots: tuple[int, ...] = (1, 5), novel_only: bool = True,
                        data_format: str = "auto") -> dict[str, tuple[float, float]]:
    """`few_shot_report` in a saved model's embedding space on the dataset at `data`.

    With `novel_only`, episodes use the second half of the classes (the zero-shot split's unseen species).
    """
    cfg = cfg or FewShotConfig()
    model, _ = load_model(model_dir, device=cfg.device)
    dataset = read_dataset(data, data_format)
    if novel_only:
        dataset = zero_shot_split(dataset)[1]
    spec = model_spec(model, regions=False, **({"image_size": cfg.image_size} if cfg.image_size else {}))
    feats = extract_features(model, dataset.samples, spec, batch_size=cfg.batch_size, workers=cfg.workers,
                             device=cfg.device)
    return few_shot_report(feats.image, np.asarray(dataset.labels)[feats.index], cfg, shots)


def format_few_shot(report: dict[str, tuple[float, float]]) -> str:
    """Markdown lines "| 5-way 1-shot | 0.812 ± 0.016 |"."""
    lines = ["| episode | accuracy (95% CI) |", "|---|---|"]
    return "\n".join(lines + [f"| {name} | {mean:.3f} ± {ci:.3f} |" for name, (mean, ci) in report.items()]) + "\n"


# ------------------------------------------------------------------------------------------------- benchmark
NEAREST_CENTROID = ("nc-offtheshelf", "nc-finetuned")
META_METHODS = ("protonet", "protonet-bilinear", "protonet-pretrained")
ALL_WAY = 0  # `ways` entry meaning every class that has enough images
FEWSHOT_EVAL_KIND = "fewshot-eval"


@dataclass
class FewShotBenchConfig:
    """What `fgia bench fewshot` runs (see the module docstring).

    `ways` x `shots` episode shapes (`ALL_WAY` = 0: every usable class), `n_query` queries per class, `episodes`
    per shape. `meta` is the episodic training of "protonet" and "protonet-bilinear" (`method_options`: their
    "protonet" model options), `pretrained_meta` that of "protonet-pretrained"; `target_method` and `target_episode`
    define the issue's target (its margin over nearest centroid on off-the-shelf features, in confidence
    half-widths).
    """

    datasets: tuple[str, ...] = SHARED_DATASETS
    methods: tuple[str, ...] = (*NEAREST_CENTROID, *META_METHODS)
    ways: tuple[int, ...] = (5, ALL_WAY)
    shots: tuple[int, ...] = (1, 5)
    n_query: int = 15
    episodes: int = 600
    seed: int = 0
    max_images_per_class: int | None = None
    meta: EpisodicConfig = field(default_factory=EpisodicConfig)
    # Chosen on held-out auxiliary species of CUB-100 (never on the unseen ones), see the results page.
    pretrained_meta: EpisodicConfig = field(default_factory=lambda: EpisodicConfig(
        n_way=20, k_shot=1, episodes=300, lr=1e-3, backbone_lr_scale=0.1))
    method_options: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "protonet": {"pooling": "gap"}, "protonet-bilinear": {"pooling": "bilinear", "reduce_dim": 64}})
    target_method: str = "protonet-pretrained"
    target_episode: str = "5-way 5-shot"
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(NEAREST_CENTROID) - set(META_METHODS)
        if unknown:
            raise ValueError(f"unknown few-shot methods {sorted(unknown)}; known: {NEAREST_CENTROID + META_METHODS}")
        if self.episodes < 2:
            raise ValueError(f"a confidence interval needs episodes >= 2, got {self.episodes}")


@dataclass
class FewShotRow:
    """One (dataset, method, episode shape) result; `ways` is the number of classes per episode."""

    dataset: str
    method: str
    episode: str
    ways: int
    shots: int
    accuracy: float
    ci95: float
    episodes: int
    train_seconds: float | None = None


def episode_name(ways: int, shots: int) -> str:
    """"5-way 1-shot", or "all-way 5-shot" for `ALL_WAY`."""
    return f"{'all' if ways == ALL_WAY else ways}-way {shots}-shot"


def usable_classes(labels: np.ndarray, shots: int, n_query: int) -> int:
    """Classes with at least shots + n_query images (label -1 ignored)."""
    _, counts = np.unique(labels[labels >= 0], return_counts=True)
    return int((counts >= shots + n_query).sum())


def _method_features(method: str, aux: FineGrainedDataset, novel: FineGrainedDataset, cache: TrunkCache,
                     cfg: FewShotBenchConfig, save_dir: Path | None, log: Callable[[str], None],
                     finetuned: Callable[[], tuple[nn.Module, float]]) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(features of the novel images, their labels, training seconds) of one method. `finetuned()` gives the
    classification-trained embedding and its training seconds (trained once per dataset), which "nc-finetuned"
    uses and "protonet-pretrained" starts from; both count those seconds."""
    recipe = cfg.recipe
    if method == "nc-offtheshelf":
        model = recipe.offtheshelf().to(pick_device(recipe.device))
        features, labels = embed(cache, model, novel)
        return features, labels, None
    pretrained_s = 0.0
    if method in ("nc-finetuned", "protonet-pretrained"):
        model, pretrained_s = finetuned()
    start = time.perf_counter()
    if method in META_METHODS:
        meta = cfg.pretrained_meta if method == "protonet-pretrained" else cfg.meta
        seed_everything(meta.seed)
        model = copy.deepcopy(model) if method == "protonet-pretrained" else create_model(
            "protonet", **recipe.model_kwargs(**cfg.method_options.get(method, {})))
        history = meta_train(model, cache, aux.samples, meta)
        tail = history[-max(1, len(history) // 10):]
        log(f"  {method}: last episodes' query accuracy {np.mean([h['accuracy'] for h in tail]):.3f}, "
            f"{np.mean([h['seconds'] for h in history]):.2f} s/episode")
    seconds = time.perf_counter() - start + pretrained_s
    if save_dir is not None:
        save_model(model, save_dir / method, aux.classes if hasattr(model, "num_classes") else [])
    features, labels = embed(cache, model, novel)
    return features, labels, seconds


def bench_fewshot_dataset(name: str, ds: FineGrainedDataset, cache: TrunkCache, cfg: FewShotBenchConfig,
                          save_dir: Path | None = None, log: Callable[[str], None] = print) -> list[FewShotRow]:
    """Every method and episode shape on one dataset's unseen species (first half of the classes trains)."""
    aux, novel = zero_shot_split(ds)

    @functools.cache
    def finetuned() -> tuple[nn.Module, float]:
        start = time.perf_counter()
        model = fit(cfg.recipe.embedding_config(), aux, progress=False, on_epoch_end=epoch_logger(log)).model
        return model, time.perf_counter() - start

    rows = []
    for method in cfg.methods:
        features, labels, seconds = _method_features(method, aux, novel, cache, cfg, save_dir, log, finetuned)
        for ways in cfg.ways:
            for shots in cfg.shots:
                n_way = usable_classes(labels, shots, cfg.n_query) if ways == ALL_WAY else ways
                accuracy, ci = few_shot_episodes(features, labels, n_way, shots, cfg.n_query, cfg.episodes,
                                                 cfg.seed)
                rows.append(FewShotRow(name, method, episode_name(ways, shots), n_way, shots, accuracy, ci,
                                       cfg.episodes, seconds))
                log(f"{name} {method} {rows[-1].episode} ({n_way} classes): {accuracy:.4f} ± {ci:.4f}")
    return rows


def fewshot_targets(rows: list[FewShotRow], cfg: FewShotBenchConfig) -> dict[str, dict[str, Any]]:
    """`min_margin_over_ci`: over datasets, the smallest (target method - nearest centroid on off-the-shelf
    features) / the larger of their two confidence half-widths, in `target_episode` episodes."""
    margins = {}
    for dataset in dict.fromkeys(r.dataset for r in rows):
        found = {r.method: r for r in rows if r.dataset == dataset and r.episode == cfg.target_episode}
        if cfg.target_method in found and "nc-offtheshelf" in found:
            meta, base = found[cfg.target_method], found["nc-offtheshelf"]
            margins[dataset] = (meta.accuracy - base.accuracy) / max(meta.ci95, base.ci95, 1e-12)
    if not margins:
        return {}
    value = min(margins.values())
    return {"min_margin_over_ci": {**target(round(value, 3), 1.0, ">="),
                                   "per_dataset": {k: round(v, 3) for k, v in margins.items()}}}


def bench_fewshot(datasets: dict[str, FineGrainedDataset], cfg: FewShotBenchConfig | None = None,
                  on_progress: Callable[[dict[str, Any]], None] | None = None, save_dir: Path | None = None,
                  progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The benchmark on `datasets` ({name: dataset}): the results payload (targets, config, split sizes, rows,
    times); `on_progress(payload)` after every dataset; trained models go to `save_dir/<dataset>/<method>`."""
    cfg = cfg or FewShotBenchConfig()
    start = time.perf_counter()
    cache, cache_s = timed_shared_cache(cfg.recipe, datasets, progress, log)
    rows: list[FewShotRow] = []
    payload: dict[str, Any] = {}
    for name, ds in datasets.items():
        rows += bench_fewshot_dataset(name, ds, cache, cfg, None if save_dir is None else save_dir / name, log)
        payload = {
            "targets": fewshot_targets(rows, cfg),
            "config": to_dict(cfg),
            "splits": {n: _split_summary(d) for n, d in datasets.items()},
            "seed": cfg.seed,
            "machine": machine(),
            "cache_s": round(cache_s, 1),
            "train_s": round(sum({(r.dataset, r.method): r.train_seconds or 0 for r in rows}.values()), 1),
            "elapsed_s": round(time.perf_counter() - start, 1),
            "rows": [asdict(r) for r in rows],
        }
        if on_progress is not None:
            on_progress(payload)
    return payload


def _split_summary(ds: FineGrainedDataset) -> dict[str, int]:
    aux, novel = zero_shot_split(ds)
    return {"aux_classes": len(aux.classes), "aux_images": len(aux), "novel_classes": len(novel.classes),
            "novel_images": len(novel)}


def pretrained_meta_line(cfg: dict[str, Any]) -> str:
    """"; protonet-pretrained: ..." describing its meta stage, or "" when the run did not include it."""
    if "protonet-pretrained" not in cfg["methods"]:
        return ""
    m = cfg["pretrained_meta"]
    return (f"; protonet-pretrained: the nc-finetuned embedding, then {m['episodes']} episodes of {m['n_way']}-way "
            f"{m['k_shot']}-shot at learning rate {m['lr'] * m['backbone_lr_scale']:g}")


def fewshot_markdown(payload: dict[str, Any]) -> str:
    """The results page: the target, then one table per dataset (method x episode shape, accuracy ± CI)."""
    cfg, rows = payload["config"], payload["rows"]
    recipe, meta = cfg["recipe"], cfg["meta"]
    lines = ["# Few-shot fine-grained recognition (CPU)", "",
             f"Unseen species (second half of each dataset's classes); {cfg['episodes']} episodes per shape, "
             f"{cfg['n_query']} queries per class, 95 % confidence half-widths. Backbone {recipe['backbone']} "
             f"({recipe['weights']}) at {recipe['image_size']} px, every stage but the last frozen and cached. "
             f"Meta-training: {meta['episodes']} episodes of {meta['n_way']}-way {meta['k_shot']}-shot with "
             f"{meta['n_query']} queries per class{pretrained_meta_line(cfg)}. Seed {cfg['seed']}; "
             f"{payload['machine']}; "
             f"{payload['elapsed_s']:.0f} s in all (training {payload['train_s']:.0f} s).", ""]
    for key, t in payload["targets"].items():
        per = ", ".join(f"{k} {v:.2f}" for k, v in t["per_dataset"].items())
        lines += [f"Target `{key}` ({cfg['target_method']} vs nc-offtheshelf, {cfg['target_episode']}): "
                  f"{t['value']:.2f} {t['op']} {t['threshold']} -> {'met' if t['met'] else 'NOT met'} ({per}).", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        episodes = list(dict.fromkeys(r["episode"] for r in mine))
        ways = {r["episode"]: r["ways"] for r in mine}
        lines += [f"## {dataset}", "", "| method | " + " | ".join(f"{e} ({ways[e]} classes)" for e in episodes)
                  + " | train s |", "|---|" + "---:|" * (len(episodes) + 1)]
        for method in dict.fromkeys(r["method"] for r in mine):
            cells = {r["episode"]: r for r in mine if r["method"] == method}
            seconds = next(iter(cells.values()))["train_seconds"]
            lines.append(f"| {method} | " + " | ".join(f"{cells[e]['accuracy']:.3f} ± {cells[e]['ci95']:.3f}"
                                                      for e in episodes) + f" | {seconds or 0:.0f} |")
        lines.append("")
    return "\n".join(lines)


def run_fewshot_bench(shared: str | os.PathLike, cfg: FewShotBenchConfig | None = None,
                      results_dir: str | os.PathLike = Path("benchmarks/results"), name: str = "fewshot",
                      progress: bool = False) -> dict[str, Any]:
    """`fgia bench fewshot`: the benchmark on the datasets under `shared`, writing `<name>_<device>.json` and `.md`
    into `results_dir` after every dataset."""
    return run_shared_bench(shared, cfg or FewShotBenchConfig(), bench_fewshot, fewshot_markdown, results_dir, name,
                            progress)


def run_fewshot_eval(data: str | os.PathLike, out_dir: str | os.PathLike,
                     config: str | os.PathLike | FewShotBenchConfig | None = None,
                     data_format: str = "auto", force: bool = False) -> dict[str, Any]:
    """`fgia eval --task fewshot --data DATA` (no model): meta-train on the first half of DATA's classes and compare
    on the second half (`bench_fewshot` on one dataset); the models go to `out_dir/models`, the report to
    `out_dir/fewshot.json` and `.md`. `config`: a FewShotBenchConfig or its YAML file. A non-empty `out_dir` that
    holds no few-shot evaluation is refused unless `force` (`fgia.runtime.output_folder`)."""
    cfg = config if isinstance(config, FewShotBenchConfig) else (
        load_yaml(FewShotBenchConfig, config) if config else FewShotBenchConfig())
    ds = read_dataset(data, data_format)
    with output_folder(out_dir, FEWSHOT_EVAL_KIND, force=force) as out:
        payload = bench_fewshot({Path(data).stem: ds}, cfg, save_dir=out / "models",
                                log=lambda line: print(line, flush=True))
        atomic_write_text(out / "fewshot.json", json.dumps(payload, indent=1))
        atomic_write_text(out / "fewshot.md", fewshot_markdown(payload))
    print(fewshot_markdown(payload), flush=True)
    return payload
