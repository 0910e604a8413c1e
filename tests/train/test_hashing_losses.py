"""Hashing losses: each term against hand-computed values; training a hashing model groups its codes by class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fgia.features.binary import binarize
from fgia.metrics import evaluate_hamming
from fgia.models import create_model
from fgia.train import fit
from fgia.train.cache import trunk_cache
from fgia.train.hashing import (
    attention_overlap_loss,
    balance_loss,
    decorrelation_loss,
    dpsh_loss,
    quantization_loss,
)
from fgia.train.trainer import normalisation


def test_terms_by_hand():
    assert quantization_loss(torch.tensor([[0.5, -1.0]])).item() == pytest.approx(0.125)
    assert balance_loss(torch.tensor([[1.0, 1.0], [-1.0, 1.0]])).item() == pytest.approx(0.5)
    hadamard = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    assert decorrelation_loss(hadamard).item() == pytest.approx(0.0)  # orthogonal bits: U^T U / n = I
    assert decorrelation_loss(torch.ones(2, 2)).item() == pytest.approx(0.5)  # ((1-1)^2*2 + 1^2*2) / 2^2


def test_dpsh_likelihood_by_hand():
    same = torch.tensor([0, 0])
    # orthogonal codes: theta = 0, loss softplus(0) - s * 0 = ln 2 for both ordered pairs
    assert dpsh_loss(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), same).item() == pytest.approx(math.log(2))
    equal = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # theta = 1
    assert dpsh_loss(equal, torch.tensor([0, 1])).item() == pytest.approx(math.log(1 + math.e))
    assert dpsh_loss(equal, same).item() == pytest.approx(math.log(1 + math.e) - 1)


def test_attention_overlap():
    same = torch.ones(1, 2, 3, 3) / 9
    assert attention_overlap_loss(same).item() == pytest.approx(1.0)
    apart = torch.zeros(1, 2, 3, 3)
    apart[0, 0, 0, 0] = apart[0, 1, 2, 2] = 1.0
    assert attention_overlap_loss(apart).item() == pytest.approx(0.0)


@pytest.mark.parametrize("model, loss", [("a2net_hash", "a2net_hash"), ("deep_hash", "dpsh")])
def test_training_groups_codes_by_class(one_category, tiny_config, model, loss):
    kwargs = {"backbone": "test_efficientnet", "bits": [16], "frozen_stages": None}
    pk_images = 2 if loss == "dpsh" else 0  # the pairwise loss needs positives in a batch
    cfg = tiny_config(model=model, model_kwargs=kwargs, loss=loss, epochs=40, batch_size=8, pk_images=pk_images, lr=1e-2,
                      freeze_backbone_bn=True)  # few steps: the backbone's running statistics would lag its weights
    train = one_category.split("train")
    untrained = create_model(model, num_classes=len(train.classes), **kwargs)
    result = fit(cfg, train, progress=False)
    trained = result.model
    # DPSH's model has no classifier: no training top-1 (not 0.0) in its history
    assert result.history and all((h["train_top1"] is None) == (model == "deep_hash") for h in result.history)
    mean, std = normalisation(trained)
    cache = trunk_cache(trained.lower_trunk(), train.samples, image_size=64, mean=mean, std=std, views=("resize",))
    labels = np.array(train.labels)

    def hamming_map(m):
        codes = binarize(cache.embeddings(m, train.samples))
        return evaluate_hamming(codes, labels, codes, labels, exclude_ids=np.arange(len(labels)))["mAP"]

    assert hamming_map(trained) > hamming_map(untrained) + 0.1


def test_hashing_loss_needs_a_hashing_model(one_category, tiny_config):
    with pytest.raises(ValueError, match="need a hashing model"):
        fit(tiny_config(loss="dpsh", epochs=1), one_category.split("train"), progress=False)
