"""Fine-grained recognition on a train/test split: a linear probe on off-the-shelf GAP against the trained methods.

Every trained method is a `MethodEmbedder` method (one backbone, input size and training budget, `MethodsConfig`)
trained on all of `train`. A method whose frozen stages are the ones in the given trunk cache (`fgia.train.cache`)
trains on the cached maps and is tested on the test images' cached plain-resize view; any other (the attention
crop, whose second pass needs the image) is tested on the images, resized the same way. The linear probe is a
multinomial logistic regression (scikit-learn) on the standardised GAP feature of the off-the-shelf trunk, both
cached views of every training image, its C chosen (on the plain view) on a stratified fifth of the training images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fgia.data import DatasetError, official_split, stratified_split
from fgia.data.samples import FineGrainedDataset, Sample
from fgia.data.torch_dataset import make_loader
from fgia.eval.methods import MethodEmbedder
from fgia.features.descriptors import DescriptorModel, create_descriptor
from fgia.features.extract import ResizeWithOriginalSize, normalize, prepare_model
from fgia.metrics import topk_accuracy
from fgia.models.frozen import FrozenLowerTrunk
from fgia.models.output import ModelOutput
from fgia.runtime import pick_device
from fgia.train.cache import TrunkCache

FUSED = ""
"""The head name of a model's own (fused) logits."""
HEAD_ROWS = {"cnnets": {"conv": "Conv-Net", "norm": "Norm-Net"}}
"""Models whose single heads get rows of their own (the paper's Table 3), with the rows' names."""
PROBE = "linear_probe"


@dataclass
class RecognitionRow:
    """One method's top-1 / top-5 on the test images, with what it trained and what that cost."""

    method: str
    top1: float
    top5: float
    epochs: int
    trainable: str
    trainable_params_m: float
    cached: bool
    train_s: float
    test_s: float
    n_test: int


def recognition_split(ds: FineGrainedDataset, test_fraction: float = 0.5,
                      seed: int = 0) -> tuple[FineGrainedDataset, FineGrainedDataset, str]:
    """(train, test, which split): the dataset's shipped split, else a seeded stratified one (`stratified_split`)."""
    try:
        return (*official_split(ds), "the shipped train/test split")
    except DatasetError:
        return (*stratified_split(ds, test_fraction, seed),
                f"a stratified split (test fraction {test_fraction}, seed {seed})")


def _stacked(out: ModelOutput) -> torch.Tensor:
    """(B, 1 + heads, C): the fused logits, then each head's."""
    return torch.stack([out.logits, *out.head_logits.values()], 1)


def logits_of(model: nn.Module, samples: Sequence[Sample], image_size: int, cache: TrunkCache | None = None,
                batch_size: int = 64, workers: int = 0,
                device: str = "auto") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({head name: (N, C) logits}, positions in `samples`) of the readable test images: the fused logits under
    `FUSED`, each head's under its name; from the cache's plain-resize view when given, else from the images
    resized to image_size x image_size (the same geometry)."""
    dev = pick_device(device)
    model = prepare_model(model, dev)
    with torch.inference_mode():
        if cache is not None:
            index = np.array([i for i, s in enumerate(samples) if str(s.path) in cache.rows], dtype=np.int64)
            probe = model.forward_top(torch.from_numpy(np.asarray(cache.maps[:1, 0], np.float32)).to(dev))
            stacked = cache.apply(lambda x: _stacked(model.forward_top(x)), [samples[i] for i in index],
                                  batch_size=batch_size, device=dev)
        else:
            loader = make_loader(samples, ResizeWithOriginalSize(image_size), batch_size, workers=workers)
            parts, indices, probe = [], [], None
            for batch, _, idx in loader:
                probe = model(normalize(batch["image"].to(dev), model.mean, model.std))
                parts.append(_stacked(probe).float().cpu().numpy())
                indices.append(idx.numpy())
            if probe is None:
                raise ValueError("none of the test images could be read")
            stacked, index = np.concatenate(parts), np.concatenate(indices)
    names = [FUSED, *probe.head_logits]
    return {name: stacked[:, i] for i, name in enumerate(names)}, index


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    ks = (1, 5) if logits.shape[1] >= 5 else (1,)
    acc = topk_accuracy(logits, labels, ks)
    return acc["top1"], acc.get("top5", 1.0)


def trainable_part(model: nn.Module) -> tuple[str, float]:
    """(what trains, in words; trainable parameters in millions)."""
    frozen = getattr(model, "frozen_stages", 0)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    if not frozen:
        return "all", params
    if isinstance(model, FrozenLowerTrunk):
        return f"stages after the first {frozen} + head (frozen stages cached once)", params
    return (f"stages after the first {frozen} + head (frozen stages run on every image and crop, every step: the "
            "crop pass needs the image, so no cache)", params)


def method_rows(embedder: MethodEmbedder, method: str, test: FineGrainedDataset,
                cache: TrunkCache | None) -> list[RecognitionRow]:
    """The rows of one trained method: its fused logits, plus each head for the models in `HEAD_ROWS`."""
    cfg = embedder.cfg
    model, train_s = embedder.train(method)
    serves = cache is not None and embedder.cache_serves(model, test.samples)
    start = time.perf_counter()
    logits, index = logits_of(model, test.samples, cfg.image_size, cache if serves else None, cfg.batch_size,
                                cfg.workers, cfg.device)
    test_s = time.perf_counter() - start
    labels = np.asarray(test.labels)[index]
    trainable, params = trainable_part(model)
    named = {FUSED: method, **{head: f"{method}/{name}" for head, name in
                               HEAD_ROWS.get(embedder.model_name(method), {}).items()}}
    rows = []
    for head, name in named.items():
        top1, top5 = _accuracy(logits[head], labels)
        rows.append(RecognitionRow(name, top1, top5, embedder.train_configs[method].epochs, trainable, params, serves,
                                   train_s, test_s, len(labels)))
    return rows


def linear_probe(cache: TrunkCache, trunk: nn.Module, frozen_stages: int, train: FineGrainedDataset,
                 test: FineGrainedDataset, cs: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0,
                 device: str = "auto") -> tuple[RecognitionRow, float]:
    """The linear-probe row (GAP of the off-the-shelf `trunk`, features from `cache`) and the C it chose."""
    start = time.perf_counter()
    gap = DescriptorModel(trunk, create_descriptor("gap"), frozen_stages=frozen_stages)
    dev = pick_device(device)

    def features(ds: FineGrainedDataset, views: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        readable = [s for s in ds.samples if str(s.path) in cache.rows]
        x = np.concatenate([cache.embeddings(gap.to(dev), readable, view=v, device=dev) for v in views])
        return x, np.tile([s.label for s in readable], len(views))

    def classifier(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, random_state=seed))

    views = range(len(cache.views))
    fit_part, val_part = stratified_split(train, 0.2, seed)
    x_fit, y_fit = features(fit_part, [0])  # choosing C on one view is enough and half the work
    x_val, y_val = features(val_part, [0])
    scores = {c: classifier(c).fit(x_fit, y_fit).score(x_val, y_val) for c in cs}
    best = max(cs, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    x_train, y_train = features(train, views)
    probe = classifier(best).fit(x_train, y_train)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    x_test, y_test = features(test, [0])
    # decision_function columns follow probe.classes_; a class absent from training cannot be predicted
    logits = np.full((len(y_test), len(train.classes)), -np.inf)
    logits[:, probe.classes_] = probe.decision_function(x_test)
    top1, top5 = _accuracy(logits, y_test)
    row = RecognitionRow(PROBE, top1, top5, 0, "linear classifier on frozen GAP (C on a fifth of the training images)",
                         (gap.embedding_dim + 1) * len(train.classes) / 1e6, True, train_s,
                         time.perf_counter() - start, len(y_test))
    return row, best
