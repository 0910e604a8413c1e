"""The classification task: metrics against hand-made predictions, class alignment, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fgia.data import DatasetError, read_dataset
from fgia.eval.classify import (
    ClassifyConfig,
    align_classes,
    classify_checkpoint,
    evaluate_classification,
    format_classification,
)
from fgia.models import create_model, model_spec, save_model
from fgia.models.output import ModelOutput

CFG = ClassifyConfig(image_size=32, batch_size=8, workers=0, device="cpu")


class _Oracle(nn.Module):
    """Predicts class `answers[i]` for the i-th image it sees (images arrive in dataset order)."""

    mean = std = (0.5, 0.5, 0.5)

    def __init__(self, answers: list[int], num_classes: int):
        super().__init__()
        self.answers, self.num_classes, self.seen = answers, num_classes, 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        picked = torch.tensor(self.answers[self.seen : self.seen + len(x)])
        self.seen += len(x)
        logits = torch.nn.functional.one_hot(picked, self.num_classes).float() + 0 * self.dummy
        return ModelOutput(logits=logits, head_logits={"crop": logits})


@pytest.fixture(scope="module")
def synth(tiny_synth):
    return read_dataset(tiny_synth)


def test_metrics_on_the_official_test_split_match_hand_count(synth):
    test = synth.split("test")
    labels = test.labels
    # right on every image except all of class labels[0]'s: top-1 drops by its share, its class scores 0
    wrong_class = labels[0]
    answers = [(y + 1) % len(synth.classes) if y == wrong_class else y for y in labels]
    metrics = evaluate_classification(_Oracle(answers, len(synth.classes)), synth, cfg=CFG)
    n_wrong = sum(y == wrong_class for y in labels)
    n_classes = len(set(labels))
    assert metrics["n"] == len(test)
    assert metrics["top1"] == pytest.approx(1 - n_wrong / len(labels))
    assert metrics["mean_per_class"] == pytest.approx((n_classes - 1) / n_classes)
    assert metrics["top1_crop"] == metrics["top1"]
    table = format_classification(metrics)
    assert "| all |" in table and "| crop |" in table and f"{len(test)} images" in table


def test_align_classes_renumbers_by_name_and_rejects_unknown(synth):
    reordered = list(reversed(synth.classes)) + ["extra/sp99"]
    aligned = align_classes(synth, reordered)
    first = synth.samples[0]
    assert aligned.classes == reordered
    assert reordered[aligned.samples[0].label] == synth.classes[first.label]
    with pytest.raises(ValueError, match="not trained on"):
        align_classes(synth, synth.classes[:3])


def test_class_count_mismatch_and_missing_split_are_errors(synth):
    with pytest.raises(ValueError, match="pass the model's class_names"):
        evaluate_classification(_Oracle([], 3), synth, cfg=CFG)
    with pytest.raises(DatasetError, match="no labelled images"):
        evaluate_classification(_Oracle([], len(synth.classes)), synth,
                                cfg=ClassifyConfig(split="val", image_size=32, device="cpu"))


def test_classify_checkpoint_end_to_end(synth, tiny_synth, tmp_path):
    model = create_model("plain", num_classes=len(synth.classes), backbone="resnet18")
    save_model(model, tmp_path / "m", synth.classes)
    metrics = classify_checkpoint(tmp_path / "m", tiny_synth, CFG)
    assert metrics["n"] == len(synth.split("test"))
    assert 0.0 <= metrics["mean_per_class"] <= 1.0 and metrics["top1"] <= metrics["top5"]


class _SizeProbe(_Oracle):
    """An oracle that records the input sizes it is given."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        self.sizes = getattr(self, "sizes", set()) | {tuple(x.shape[-2:])}
        return super().forward(x)


def test_a_model_is_read_at_the_size_it_was_trained_at(synth):
    test = synth.split("test")
    probe = _SizeProbe(test.labels, len(synth.classes))
    probe.spec = model_spec(probe, image_size=40)  # what training and load_model set
    evaluate_classification(probe, synth, cfg=ClassifyConfig(batch_size=8, device="cpu"))
    assert probe.sizes == {(40, 40)}
    probe.seen = 0
    evaluate_classification(probe, synth, cfg=ClassifyConfig(image_size=48, batch_size=8, device="cpu"))
    assert (48, 48) in probe.sizes  # an explicit size still wins
