"""`fgia bench methods`: train/evaluate a list of survey methods on one zero-shot split, one Markdown table.

The auxiliary half of the classes (`train`) trains every trained method (its own shipped train/test split,
or every `holdout_every`-th image per class, gives the held-out images for top-1; `holdout_every=None` trains on
all of it) and fits the PCA-whitening; the other half (`test`) is retrieved leave-one-out (each image queries all
the others), reporting mAP, mAP@R and Recall@K as the metric-learning literature does for CUB and Cars.

Method names:
  "<descriptor>-offtheshelf"  a registered descriptor on the untrained backbone (`weights`), e.g. "gem-offtheshelf"
  "<descriptor>-finetuned"    the same on the trunk of the "plain" model fine-tuned on the auxiliary set
  "plain", "cnnets", "bilinear", "compact_bilinear", "attention_crop"   trained with cross-entropy; their embedding
  "proxy_anchor", "multi_similarity", "triplet", "arcface", "normalized_softmax"   "plain" trained with that loss
  an alias in `MethodsConfig.aliases`     a variant of a registered model (its own `model_kwargs` entry)
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import fgia.models.attention  # noqa: F401  (registers "attention_crop")
import fgia.models.encoders  # noqa: F401  (registers "bilinear", "compact_bilinear")
import fgia.train.metric_learning  # noqa: F401  (registers the metric-learning losses)
from fgia.config import load_yaml, to_dict
from fgia.data import DatasetError, official_split, read_dataset, zero_shot_split
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.data.synthetic import SynthConfig, generate_benchmark
from fgia.eval.classify import ClassifyConfig, evaluate_classification
from fgia.features.descriptors import (
    DescriptorModel,
    PreLogits,
    create_descriptor,
    fit_descriptor,
    fit_whitening,
)
from fgia.features.extract import extract_models, group_spec
from fgia.features.pca import l2_normalize
from fgia.metrics import evaluate_retrieval
from fgia.models import create_network, create_trunk
from fgia.models.frozen import FrozenLowerTrunk
from fgia.models.spec import ExtractionSpec
from fgia.runtime import atomic_write_text, pick_device, seed_everything
from fgia.train.cache import TrunkCache, cache_key
from fgia.train.config import TrainConfig
from fgia.train.trainer import fit, initial_model

CE_MODELS = ("plain", "cnnets", "bilinear", "compact_bilinear", "attention_crop")
METRIC_LOSSES = ("proxy_anchor", "multi_similarity", "triplet", "arcface", "normalized_softmax")
DESCRIPTOR_MODES = ("offtheshelf", "finetuned")
DEFAULT_METHODS = (
    "gap-offtheshelf", "mac-offtheshelf", "gem-offtheshelf", "rmac-offtheshelf", "crow-offtheshelf",
    "scda-offtheshelf", "vlad-offtheshelf", "neural_codes-offtheshelf", "gem-finetuned", "scda-finetuned",
    "plain", "cnnets", "bilinear", "compact_bilinear", "attention_crop", "proxy_anchor", "multi_similarity",
    "triplet", "arcface",
)


@dataclass
class MethodsConfig:
    """One comparison: a backbone and training recipe shared by every method, plus per-method options."""

    backbone: str = "resnet18"
    weights: str | None = None
    image_size: int = 64
    epochs: int = 3
    batch_size: int = 16
    pk_images: int = 4
    lr: float = 0.01
    backbone_lr_scale: float = 1.0
    optimizer: str = "sgd"
    label_smoothing: float = 0.0
    whiten: bool = True
    pca_dim: int | None = None
    holdout_every: int | None = 4
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    model_kwargs: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"bilinear": {"reduce_dim": 32}, "compact_bilinear": {"dim": 2048},
                                 "cnnets": {"head_dim": 256}})
    loss_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    descriptor_kwargs: dict[str, dict[str, Any]] = field(default_factory=lambda: {"vlad": {"clusters": 8}})
    train_options: dict[str, Any] = field(default_factory=dict)  # any TrainConfig field (over the above)
    aliases: dict[str, str] = field(default_factory=dict)  # method name -> the registered model it varies
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> TrainConfig overrides
    # method -> epochs its model's `first_pass()` trains alone (on the trunk cache) before the method's own training
    warm_start_epochs: dict[str, int] = field(default_factory=dict)
    synth: SynthConfig = field(default_factory=SynthConfig)  # the benchmark generated when no dataset is given

    def __post_init__(self) -> None:
        if self.holdout_every is not None and self.holdout_every < 2:
            raise ValueError(f"holdout_every must be >= 2 (or None: no held-out images), got {self.holdout_every}")
        unknown = {alias: model for alias, model in self.aliases.items() if model not in CE_MODELS}
        if unknown:
            raise ValueError(f"aliases must name one of {CE_MODELS}, got {unknown}")


@dataclass
class MethodResult:
    """One row of the table; `top1` is None for methods without a trained classifier."""

    method: str
    feature_dim: int
    ms_per_image: float
    top1: float | None
    mAP: float
    map_at_r: float
    recall: dict[str, float]
    train_seconds: float | None = None


def parse_method(method: str, aliases: Collection[str] = ()) -> tuple[str, str | None]:
    """("descriptor", mode) for "<descriptor>-<mode>", ("model", None) for a trained method (a model, a metric loss
    or one of `aliases`); unknown -> error."""
    if method in CE_MODELS or method in METRIC_LOSSES or method in aliases:
        return method, None
    name, _, mode = method.rpartition("-")
    if mode in DESCRIPTOR_MODES and name:
        create_descriptor(name)  # raises KeyError with the known names
        return name, mode
    raise ValueError(f"unknown method {method!r}: use <descriptor>-offtheshelf|finetuned, one of {CE_MODELS} "
                     f"or one of {METRIC_LOSSES}")


def holdout_split(ds: FineGrainedDataset, every: int) -> tuple[FineGrainedDataset, FineGrainedDataset]:
    """(fit, held-out) images: the dataset's own train/test split, else every `every`-th image of each class."""
    try:
        return official_split(ds)
    except DatasetError:
        seen: dict[int, int] = {}
        held = set()
        for i, s in enumerate(ds.samples):
            seen[s.label] = seen.get(s.label, 0) + 1
            if seen[s.label] % every == 0:
                held.add(i)
        fit_part = replace(ds, samples=[s for i, s in enumerate(ds.samples) if i not in held])
        return fit_part, replace(ds, samples=[ds.samples[i] for i in sorted(held)])


def zero_shot_scores(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out retrieval over one set: mAP, mAP@R and R@1/2/4/8 (Euclidean distance)."""
    n = len(features)
    return evaluate_retrieval(features, labels, features, labels, ks=(1, 2, 4, 8), exclude_ids=np.arange(n))


@dataclass
class Embedding:
    """A method's features of one list of samples, post-processed (PCA-whitened or L2-normalised).

    `index`: which samples the rows belong to (unreadable ones are skipped); `ms_per_image`: the whole extraction
    (decode + forward + pooling) per image; `top1` on the held-out auxiliary images for classifiers.
    """

    features: np.ndarray
    index: np.ndarray
    ms_per_image: float
    top1: float | None = None
    train_seconds: float | None = None


class MethodEmbedder:
    """Trains (once per method) and featurises any survey method with one auxiliary set.

    Shared by `fgia bench methods` and the single-stage baselines of the OSFGIR protocol. With a `cache` of the
    frozen lower trunk (`fgia.train.cache`) that covers the images, methods whose frozen stages are the cached ones
    are featurised from it instead of from the images.
    """

    def __init__(self, auxiliary: FineGrainedDataset, cfg: MethodsConfig, cache: TrunkCache | None = None):
        self.cfg, self.aux, self.cache = cfg, auxiliary, cache
        if cfg.holdout_every is None:
            self.fit_set, self.val_set = auxiliary, None
        else:
            self.fit_set, self.val_set = holdout_split(auxiliary, cfg.holdout_every)
        self.trained: dict[str, tuple[nn.Module, float]] = {}
        self.train_configs: dict[str, TrainConfig] = {}
        self._offtheshelf: nn.Module | None = None
        self.extract = {"batch_size": cfg.batch_size, "workers": cfg.workers, "device": cfg.device}

    def spec(self, models: Mapping[str, nn.Module]) -> ExtractionSpec:
        """How every method's features are read: whole images at the benchmark's size, the models' normalisation."""
        return group_spec(models, image_size=self.cfg.image_size, regions=False)

    def model_name(self, method: str) -> str:
        """The registered model a trained method trains ("plain" for the metric losses)."""
        return "plain" if method in METRIC_LOSSES else self.cfg.aliases.get(method, method)

    def model_options(self, method: str) -> dict[str, Any]:
        """The keyword options a trained method's model is built with (an alias's over its model's)."""
        cfg = self.cfg
        own = cfg.model_kwargs.get(method, {}) if method in cfg.aliases else {}
        return {"backbone": cfg.backbone, "weights": cfg.weights, **cfg.model_kwargs.get(self.model_name(method), {}),
                **own}

    def adopt(self, method: str, other: MethodEmbedder, trained: str) -> bool:
        """Take `other`'s model of method `trained` as this embedder's `method` when both would train the same
        model on the same images with the same options (no second training); whether it did."""
        if trained not in other.trained or other.fit_set.samples != self.fit_set.samples:
            return False
        mine = {**self.model_options(method), "model": self.model_name(method)}
        if mine != {**other.model_options(trained), "model": other.model_name(trained)}:
            return False
        self.trained[method], self.train_configs[method] = other.trained[trained], other.train_configs[trained]
        return True

    def train(self, method: str) -> tuple[nn.Module, float]:
        """The model of a trained method (trained once) and its training seconds."""
        if method not in self.trained:
            cfg = self.cfg
            model = self.model_name(method)
            loss = method if method in METRIC_LOSSES else "ce"
            fields = dict(
                model=model, model_kwargs=self.model_options(method),
                image_size=cfg.image_size, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                backbone_lr_scale=cfg.backbone_lr_scale, optimizer=cfg.optimizer,
                label_smoothing=cfg.label_smoothing, warmup_epochs=min(1.0, cfg.epochs), loss=loss,
                pk_images=cfg.pk_images if method in METRIC_LOSSES else 0,
                loss_kwargs=cfg.loss_kwargs.get(loss, {}), seed=cfg.seed, workers=cfg.workers, device=cfg.device)
            train_cfg = TrainConfig(**{**fields, **cfg.train_options, **cfg.method_options.get(method, {})})
            self.train_configs[method] = train_cfg
            start = time.perf_counter()
            result = fit(train_cfg, self.fit_set, None, progress=False, model=self._warm_started(method, train_cfg))
            self.trained[method] = (result.model, time.perf_counter() - start)
        return self.trained[method]

    def _warm_started(self, method: str, train_cfg: TrainConfig) -> nn.Module | None:
        """The method's model after `warm_start_epochs` of its first pass alone (None: no warm start; `fit`
        builds the model)."""
        epochs = self.cfg.warm_start_epochs.get(method, 0)
        if not epochs:
            return None
        seed_everything(train_cfg.seed)
        model = initial_model(train_cfg, self.fit_set)
        warm_cfg = replace(train_cfg, epochs=epochs, warmup_epochs=min(train_cfg.warmup_epochs, float(epochs)),
                           cache_trunk=True)
        fit(warm_cfg, self.fit_set, None, progress=False, model=model.first_pass())
        return model

    def offtheshelf_trunk(self) -> nn.Module:
        """One untrained-on-aux trunk for every off-the-shelf descriptor (seeded, so random weights agree too)."""
        if self._offtheshelf is None:
            seed_everything(self.cfg.seed)
            self._offtheshelf = create_trunk(self.cfg.backbone, self.cfg.weights).eval()
        return self._offtheshelf

    def model(self, method: str) -> tuple[nn.Module, float | None, float | None]:
        """(the model whose embedding is the method's raw feature, training seconds, held-out top-1)."""
        kind, mode = parse_method(method, self.cfg.aliases)
        if mode is None:
            model, train_seconds = self.train(method)
            top1 = None
            classifies = method not in METRIC_LOSSES or self.cfg.loss_kwargs.get(method, {}).get("ce_weight", 0) > 0
            if classifies and self.val_set is not None:
                classify = ClassifyConfig(split=None, image_size=self.cfg.image_size,
                                          batch_size=self.cfg.batch_size, workers=self.cfg.workers,
                                          device=self.cfg.device)
                top1 = evaluate_classification(model, self.val_set, cfg=classify)["top1"]
            return model, train_seconds, top1
        train_seconds = None
        if mode == "finetuned":
            plain, train_seconds = self.train("plain")
            trunk = plain.trunk
        else:
            trunk = self.offtheshelf_trunk()
        descriptor = self._descriptor(kind, mode)
        fit_descriptor(descriptor, trunk, self.aux.samples, seed=self.cfg.seed, image_size=self.cfg.image_size,
                       **self.extract)
        # the stages the fine-tuned plain model keeps frozen are the pretrained ones in either mode
        shared = self.cfg.model_kwargs.get("plain", {}).get("frozen_stages", 0)
        return DescriptorModel(trunk, descriptor, frozen_stages=shared), train_seconds, None

    def embed(self, method: str, *sample_lists: Sequence[Sample]) -> list[Embedding]:
        """The method's post-processed features of each list of samples (whitening fitted on the auxiliary set)."""
        return self.embed_all([method], *sample_lists)[method]

    def embed_all(self, methods: Sequence[str], *sample_lists: Sequence[Sample]) -> dict[str, list[Embedding]]:
        """`embed` for several methods with one pass over each list of samples: models that share frozen trunk
        stages (off-the-shelf descriptors, fine-tuned models with frozen stages) run them once per image, or not at
        all when the embedder's cache holds them. `ms_per_image` is then that shared pass's time per image."""
        built = {method: self.model(method) for method in methods}
        models = {method: model for method, (model, _, _) in built.items()}
        whitening = {}
        if self.cfg.whiten:
            aux = self._features(models, self.aux.samples)
            whitening = {m: fit_whitening(aux[m][0], self.cfg.pca_dim) for m in methods}
        out: dict[str, list[Embedding]] = {m: [] for m in methods}
        for samples in sample_lists:
            start = time.perf_counter()
            feats = self._features(models, list(samples))
            ms = 1000 * (time.perf_counter() - start) / max(1, len(feats[methods[0]][1]))
            for method, (raw, index) in feats.items():
                features = whitening[method].transform(raw) if method in whitening else l2_normalize(raw)
                _, train_seconds, top1 = built[method]
                out[method].append(Embedding(features, index, ms, top1, train_seconds))
        return out

    def _features(self, models: dict[str, nn.Module],
                  samples: Sequence[Sample]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each model's raw features of `samples` and which samples they are: from the cache for the models it
        serves, from one shared pass over the images for the others."""
        cached = {name: model for name, model in models.items() if self.cache_serves(model, samples)}
        out = {}
        if cached:
            index = np.array([i for i, s in enumerate(samples) if str(s.path) in self.cache.rows], dtype=np.int64)
            readable = [samples[i] for i in index]
            device = pick_device(self.cfg.device)
            out = {name: (self.cache.embeddings(model.to(device), readable, device=device), index)
                   for name, model in cached.items()}
        rest = {name: model for name, model in models.items() if name not in cached}
        if rest:
            feats = extract_models(rest, samples, self.spec(rest), **self.extract)
            out.update({name: (fs.image, fs.index) for name, fs in feats.items()})
        return {name: out[name] for name in models}

    def cache_serves(self, model: nn.Module, samples: Sequence[Sample]) -> bool:
        """Whether the cache holds `model`'s frozen lower trunk's output for every one of `samples`."""
        if self.cache is None or not isinstance(model, FrozenLowerTrunk) or not model.frozen_stages:
            return False
        key = cache_key(model.lower_trunk(), self.cfg.image_size, model.mean, model.std, self.cache.views)
        return key == self.cache.key and self.cache.covers(samples)

    def _descriptor(self, name: str, mode: str) -> nn.Module:
        options = dict(self.cfg.descriptor_kwargs.get(name, {}))
        if name == "neural_codes" and mode == "offtheshelf":
            # the penultimate layer of the network the trunk came from (timm's pre-logits head)
            seed_everything(self.cfg.seed)
            net = create_network(self.cfg.backbone, self.cfg.weights).eval()
            options["head"] = PreLogits(net)
            options["dim"] = net.num_features
        return create_descriptor(name, **options)


def _method_row(embedder: MethodEmbedder, test: FineGrainedDataset, method: str) -> MethodResult:
    """One table row: the method's features of the retrieved classes, scored leave-one-out."""
    [emb] = embedder.embed(method, test.samples)
    labels = np.asarray(test.labels)[emb.index]
    scores = zero_shot_scores(emb.features, labels)
    return MethodResult(method, int(emb.features.shape[1]), emb.ms_per_image, emb.top1, scores["mAP"],
                        scores["mAP@R"], {f"R@{k}": scores[f"R@{k}"] for k in (1, 2, 4, 8)}, emb.train_seconds)


def bench_methods(methods: list[str], train: FineGrainedDataset, test: FineGrainedDataset,
                  cfg: MethodsConfig | None = None,
                  on_result: Callable[[MethodResult], None] | None = None) -> list[MethodResult]:
    """Evaluate each method on the split (train = auxiliary classes, test = retrieved classes); one row each.

    Method names are checked before anything runs; `on_result(row)` is called as each row completes.
    """
    cfg = cfg or MethodsConfig()
    if not methods:
        raise ValueError("no methods given")
    for method in methods:
        parse_method(method)
    if set(train.classes) & set(test.classes):
        raise ValueError("the auxiliary and test sets share classes; use a zero-shot (class-disjoint) split")
    embedder = MethodEmbedder(train, cfg)
    rows = []
    for method in methods:
        rows.append(_method_row(embedder, test, method))
        if on_result is not None:
            on_result(rows[-1])
    return rows


def bench_dataset(dataset: FineGrainedDataset, methods: list[str] | None = None, cfg: MethodsConfig | None = None,
                  on_result: Callable[[MethodResult], None] | None = None) -> list[MethodResult]:
    """`bench_methods` on the zero-shot split of `dataset` (first half of the classes trains, second is retrieved)."""
    train, test = zero_shot_split(dataset)
    return bench_methods(list(methods or DEFAULT_METHODS), train, test, cfg, on_result)


def methods_markdown(rows: list[MethodResult]) -> str:
    """The comparison table: method, feature dim, extraction ms/image, top-1, mAP, R@1 (+ MAP@R, R@8)."""
    lines = ["| method | feature dim | extraction ms/image | top-1 | mAP | R@1 | MAP@R | R@8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        top1 = f"{r.top1:.3f}" if r.top1 is not None else ""
        lines.append(f"| {r.method} | {r.feature_dim} | {r.ms_per_image:.2f} | {top1} | {r.mAP:.3f} | "
                     f"{r.recall['R@1']:.3f} | {r.map_at_r:.3f} | {r.recall['R@8']:.3f} |")
    return "\n".join(lines) + "\n"


def write_methods_table(rows: list[MethodResult], path: str | os.PathLike, cfg: MethodsConfig,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write `path` (.md: config + table) and the same rows as JSON beside it (with an empty "targets": this
    comparison has none); both atomically."""
    path = Path(path)
    header = "# Methods comparison\n\n" + "".join(f"- {k}: {v}\n" for k, v in {**to_dict(cfg), **(extra or {})}.items())
    atomic_write_text(path.with_suffix(".md"), header + "\n" + methods_markdown(rows))
    payload = {"targets": {}, "config": to_dict(cfg), **(extra or {}), "rows": [asdict(r) for r in rows]}
    atomic_write_text(path.with_suffix(".json"), json.dumps(payload, indent=1))
    return path.with_suffix(".md")


def run_methods_bench(data: str | os.PathLike | None = None, methods: list[str] | None = None,
                      config: str | os.PathLike | MethodsConfig | None = None,
                      out: str | os.PathLike = Path("fgia-out/methods.md")) -> list[MethodResult]:
    """The `fgia bench methods` job: bench `methods` (default: all) on the zero-shot split of `data` (default:
    the `cfg.synth` benchmark, generated beside `out` once); rewrites `out` (.md + .json) after every method
    and prints each row, then the table. `config`: a MethodsConfig or its YAML file."""
    cfg = config if isinstance(config, MethodsConfig) else (load_yaml(MethodsConfig, config) if config else
                                                             MethodsConfig())
    out = Path(out)
    if data is None:
        data = out.parent / "methods-data" / "manifest.csv"
        if not data.is_file():
            generate_benchmark(cfg.synth, data.parent, progress=False)
        name = f"synthetic {cfg.synth.num_labelled} images"
    else:
        name = str(data)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.device != "cpu" else "CPU"
    extra = {"dataset": f"{name}, zero-shot split",
             "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device}"}
    rows: list[MethodResult] = []
    start = time.perf_counter()

    def record(row: MethodResult) -> None:
        rows.append(row)
        print(f"{row.method}: dim {row.feature_dim}, {row.ms_per_image:.2f} ms/image, mAP {row.mAP:.3f}, "
              f"R@1 {row.recall['R@1']:.3f}", flush=True)
        write_methods_table(rows, out, cfg, {**extra, "seconds": round(time.perf_counter() - start)})

    bench_dataset(read_dataset(data), methods, cfg, on_result=record)
    print(methods_markdown(rows))
    return rows
