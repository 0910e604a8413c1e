"""The pure parts of the trainer: schedule, samplers, losses, config validation."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from fgia.models.output import ModelOutput
from fgia.train import TrainConfig, list_losses, register_loss
from fgia.train.distributed import BalancedSampler, DistContext, make_sampler
from fgia.train.losses import HeadsCrossEntropy
from fgia.train.trainer import amp_dtype, warmup_cosine


def test_warmup_cosine_shape():
    factors = [warmup_cosine(s, warmup=4, total=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up reaching the base lr
    assert factors[4] == 1.0
    assert all(a > b for a, b in zip(factors[4:], factors[5:]))  # strictly decaying afterwards
    assert factors[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert warmup_cosine(20, warmup=4, total=20) == pytest.approx(0.0)
    assert warmup_cosine(0, warmup=0, total=10) == 1.0  # no warm-up starts at the base lr


def test_balanced_sampler_equalises_classes_and_splits_ranks():
    labels = [0] * 90 + [1] * 10  # 9:1 imbalance
    draws = []
    for rank in range(2):
        sampler = BalancedSampler(labels, rank=rank, world_size=2, seed=3)
        sampler.set_epoch(1)
        draws.append(list(sampler))
        assert len(draws[-1]) == len(sampler) == 50
    counts = Counter(labels[i] for d in draws for i in d)
    assert 35 <= counts[1] <= 65  # ~50 of 100 draws from the 10% class
    again = BalancedSampler(labels, rank=0, world_size=2, seed=3)
    again.set_epoch(1)
    assert list(again) == draws[0]  # a pure function of (seed, epoch): resumed runs repeat it
    again.set_epoch(2)
    assert list(again) != draws[0]


def test_shuffle_sampler_partitions_data_across_ranks():
    labels = list(range(10))
    seen = []
    for rank in range(2):
        sampler = make_sampler(labels, DistContext(rank, 2, torch.device("cpu")), balanced=False, seed=0, batch_size=4)
        sampler.set_epoch(0)
        seen += list(sampler)
    assert sorted(seen) == labels


def test_heads_cross_entropy_sums_every_head():
    torch.manual_seed(0)
    labels = torch.tensor([0, 2, 1])
    conv, norm = torch.randn(3, 4), torch.randn(3, 4)
    out = ModelOutput(logits=conv + norm, head_logits={"conv": conv, "norm": norm})
    expected = F.cross_entropy(conv, labels) + F.cross_entropy(norm, labels)
    assert HeadsCrossEntropy()(out, labels).item() == pytest.approx(expected.item())
    plain = ModelOutput(logits=conv)
    smooth = HeadsCrossEntropy(label_smoothing=0.2)(plain, labels)
    assert smooth.item() == pytest.approx(F.cross_entropy(conv, labels, label_smoothing=0.2).item())
    with pytest.raises(ValueError, match="needs logits"):
        HeadsCrossEntropy()(ModelOutput(logits=None, embedding=conv), labels)


def test_loss_registry_rejects_duplicates():
    assert "ce" in list_losses()
    with pytest.raises(ValueError, match="already registered"):
        register_loss("ce")(lambda cfg, model: None)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"amp": "fp8"}, "amp must be"),
    ({"epochs": 0}, "epochs"),
    ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"resume": True}, "out_dir"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_amp_auto_is_off_on_cpu_and_bf16_on_cuda():
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert amp_dtype("fp16", torch.device("cpu")) is torch.float16
