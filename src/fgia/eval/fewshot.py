"""Few-shot classification of new species: N-way K-shot episodes, nearest prototype in a feature space."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fgia.data import read_dataset, zero_shot_split
from fgia.features.extract import extract_features
from fgia.features.pca import l2_normalize
from fgia.models import load_model
from fgia.models.spec import model_spec


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
    query images per class; a query takes the class of the nearest prototype (mean of the L2-normalised
    support features, Euclidean distance). Unlabelled samples (label -1) are ignored.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (N, D) with one label each, got {x.shape} and {len(y)} labels")
    if min(n_way, k_shot, n_query, episodes) < 1 or n_way < 2:
        raise ValueError(f"need n_way >= 2 and k_shot, n_query, episodes >= 1; got {n_way}, {k_shot}, "
                         f"{n_query}, {episodes}")
    x = l2_normalize(x)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y[y >= 0])]
    usable = [idx for idx in by_class if len(idx) >= k_shot + n_query]
    if len(usable) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot with {n_query} queries needs {n_way} classes with "
                         f">= {k_shot + n_query} images each; only {len(usable)} have that many")
    rng = np.random.default_rng(seed)
    accuracies = np.empty(episodes)
    for e in range(episodes):
        chosen = [rng.permutation(usable[c])[: k_shot + n_query] for c in rng.choice(len(usable), n_way, replace=False)]
        prototypes = np.stack([x[idx[:k_shot]].mean(axis=0) for idx in chosen])
        queries = np.concatenate([idx[k_shot:] for idx in chosen])
        truth = np.repeat(np.arange(n_way), n_query)
        dist = ((x[queries, None, :] - prototypes[None]) ** 2).sum(axis=2)
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
