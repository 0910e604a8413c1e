"""fit / evaluate: checkpoints, resume, pluggable losses, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fgia.config import load_yaml
from fgia.models import load_model
from fgia.train import TrainConfig, evaluate, fit, predict_logits
from fgia.train.trainer import STATE_FILE


class _Interrupt(Exception):
    pass


def _stop_after(epochs: int):
    def hook(record):
        if record["epoch"] == epochs:
            raise _Interrupt

    return hook


def test_fit_learns_and_writes_a_loadable_checkpoint(one_category, tmp_path, tiny_config):
    train, test = one_category.split("train"), one_category.split("test")
    cfg = tiny_config(tmp_path / "run", epochs=6, lr=1e-2, label_smoothing=0.1)
    result = fit(cfg, train, test, progress=False)

    assert [r["epoch"] for r in result.history] == list(range(1, 7))
    assert result.history[-1]["loss"] < result.history[0]["loss"]  # it trains
    assert result.history[-1]["lr"] < 0.05 * cfg.lr  # cosine ends near zero
    assert result.last_val_top1 == result.history[-1]["val_top1"]
    assert result.best_val_top1 == max(r["val_top1"] for r in result.history)
    for name in ("model.safetensors", "model.yaml", "train_config.yaml", "history.json", STATE_FILE):
        assert (tmp_path / "run" / name).is_file()
    assert load_yaml(TrainConfig, tmp_path / "run" / "train_config.yaml") == cfg
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == result.history

    loaded, info = load_model(tmp_path / "run")
    assert info["class_names"] == train.classes
    assert info["extra"]["train_config"]["epochs"] == 6
    assert loaded.spec == result.model.spec and loaded.spec.image_size == 64  # read at the size it trained at
    kw = dict(batch_size=8, device="cpu")
    ours, labels = predict_logits(result.model, test, **kw)
    theirs, _ = predict_logits(loaded, test, **kw)
    np.testing.assert_allclose(ours[""], theirs[""], atol=1e-5)
    assert set(ours) == {"", "conv", "norm"}

    metrics = evaluate(result.model, test, **kw)
    assert metrics["top1"] == pytest.approx(np.mean(ours[""].argmax(1) == labels))
    assert metrics["top1_conv"] == pytest.approx(np.mean(ours["conv"].argmax(1) == labels))
    per_class = [np.mean(ours[""].argmax(1)[labels == c] == c) for c in np.unique(labels)]
    assert metrics["mean_per_class"] == pytest.approx(np.mean(per_class))
    assert metrics["top1"] == pytest.approx(result.history[-1]["val_top1"])


def test_resume_after_interruption_matches_uninterrupted_run(one_category, tmp_path, tiny_config):
    train = one_category.split("train")
    cfg = tiny_config(tmp_path / "full", epochs=4, balanced_sampling=True)
    full = fit(cfg, train, progress=False)

    halted = replace(cfg, out_dir=tmp_path / "halted")
    with pytest.raises(_Interrupt):
        fit(halted, train, progress=False, on_epoch_end=_stop_after(2))
    assert len(json.loads((tmp_path / "halted" / "history.json").read_text())) == 2
    resumed = fit(replace(halted, resume=True), train, progress=False)

    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history])
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)

    fresh = fit(replace(halted, out_dir=tmp_path / "other", epochs=2), train, progress=False)
    assert fresh.history[-1]["loss"] != pytest.approx(full.history[-1]["loss"])  # the test can tell runs apart


def test_resume_refuses_a_changed_config(one_category, tmp_path, tiny_config):
    train = one_category.split("train")
    cfg = tiny_config(tmp_path / "run", epochs=2)
    with pytest.raises(_Interrupt):
        fit(cfg, train, progress=False, on_epoch_end=_stop_after(1))
    with pytest.raises(ValueError, match="options changed.*lr"):
        fit(replace(cfg, lr=0.1, resume=True), train, progress=False)
    resumed = fit(replace(cfg, resume=True, workers=1), train, progress=False)  # workers may change
    assert len(resumed.history) == 2


class _TemperatureCE(nn.Module):
    """A loss with its own parameter, as margin/proxy losses have."""

    def __init__(self):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, output, labels):
        return F.cross_entropy(output.logits * self.log_t.exp(), labels)


def test_custom_loss_parameters_are_trained_and_checkpointed(one_category, tmp_path, tiny_config):
    loss = _TemperatureCE()
    cfg = tiny_config(tmp_path / "run", model="plain", model_kwargs={"backbone": "test_resnet"}, epochs=1, amp="bf16")
    result = fit(cfg, one_category.split("train"), progress=False, loss_fn=loss)
    assert loss.log_t.item() != 0.0
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert state["step"]["loss_fn.log_t"].item() == pytest.approx(loss.log_t.item())
    assert np.isfinite(result.history[0]["loss"])


class _FirstImages(torch.utils.data.Sampler):
    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(range(self.n))


def test_a_given_sampler_replaces_the_default(one_category, tmp_path, tiny_config):
    sampler = _FirstImages(8)
    fit(tiny_config(tmp_path / "run", epochs=2), one_category.split("train"), progress=False, sampler=sampler)
    assert sampler.epochs == [0, 1]
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert state["scheduler"]["last_epoch"] == 2  # one batch of 8 per epoch instead of 24 // 8 = 3
    with pytest.raises(TypeError, match="set_epoch"):
        fit(tiny_config(), one_category.split("train"), progress=False, sampler=list(range(8)))


def test_bad_input_is_refused_with_a_clear_message(one_category, tiny_config):
    train, test = one_category.split("train"), one_category.split("test")
    with pytest.raises(ValueError, match="unlabelled or out of range"):
        fit(tiny_config(), replace(train, samples=[replace(train.samples[0], label=-1)] + train.samples[1:]),
            progress=False)
    with pytest.raises(ValueError, match="different classes"):
        fit(tiny_config(), train, replace(test, classes=test.classes[::-1]), progress=False)
    with pytest.raises(ValueError, match="exceeds the 24 training images"):
        fit(tiny_config(batch_size=64), train, progress=False)
    with pytest.raises(ValueError, match="is empty"):
        fit(tiny_config(), train.filter(lambda s: False), progress=False)
    with pytest.raises(KeyError, match="unknown loss"):
        fit(tiny_config(loss="nope"), train, progress=False)


def test_pk_images_trains_on_p_by_k_batches(one_category, tiny_config):
    from fgia.train.distributed import DistContext, PKSampler, make_sampler

    labels = one_category.split("train").labels
    ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    sampler = make_sampler(labels, ctx, balanced=False, seed=0, batch_size=8, pk_images=4)
    assert isinstance(sampler, PKSampler)
    batches = np.array(list(sampler)).reshape(-1, 8)
    for batch in batches:  # 2 classes x 4 images in every batch
        assert sorted(np.bincount(np.array(labels)[batch]).tolist())[-2:] == [4, 4]
    fit(tiny_config(epochs=1, pk_images=4), one_category.split("train"), progress=False)
    with pytest.raises(ValueError, match="pk_images"):
        tiny_config(pk_images=3)
    with pytest.raises(ValueError, match="balanced_sampling"):
        tiny_config(pk_images=4, balanced_sampling=True)


def test_backbone_lr_scale_and_weight_decay_groups():
    from fgia.models import create_model
    from fgia.train.trainer import is_backbone_parameter, parameter_groups

    model = create_model("cnnets", num_classes=3, backbone="test_resnet", head_dim=8, head_stages=1)
    groups = parameter_groups(model, lr=0.1, weight_decay=1e-4, backbone_lr_scale=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(1 for _ in model.parameters())
    for name, param in model.named_parameters():
        group = by_id[id(param)]
        backbone = name.startswith("trunk.") or ".stages." in name
        assert is_backbone_parameter(name) == backbone, name
        assert group["lr"] == pytest.approx(0.01 if backbone else 0.1), name
        assert group["weight_decay"] == (1e-4 if param.ndim > 1 else 0.0), name


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_backbone_bn_keeps_pretrained_statistics(one_category, tiny_config, freeze):
    from fgia.models import create_model
    from fgia.train.trainer import backbone_norm_layers, is_backbone_parameter

    model = create_model("cnnets", num_classes=len(one_category.classes), backbone="test_resnet", head_dim=16)
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    fit(tiny_config(epochs=1, freeze_backbone_bn=freeze, backbone_lr_scale=0.0), one_category, progress=False,
        model=model)
    after = dict(model.named_buffers())
    backbone = {n for n in before if is_backbone_parameter(n)}  # the trunk and the sub-nets' copies of its stages
    new = before.keys() - backbone  # e.g. Norm-Net's BatchNorm of the class maps
    assert backbone and new and backbone_norm_layers(model)
    assert all(torch.equal(before[n], after[n]) for n in backbone) == freeze
    assert not any(torch.equal(before[n], after[n]) for n in new)  # new layers' BatchNorm always learns
