"""Checkpoints: save/load round trip, readable errors, no partial files."""

from __future__ import annotations

import pytest
import torch
import yaml

from fgia.models import create_model, load_model, save_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = create_model("cnnets", num_classes=3, backbone="test_resnet", head_dim=8, head_layers=1, head_stages=1)
    with torch.no_grad():  # make BN statistics non-default so a lost buffer would show
        m.train()(torch.randn(4, 3, 64, 64))
    return m.eval()


def test_round_trip_restores_outputs_and_info(model, tmp_path):
    save_model(model, tmp_path / "ckpt", ["a", "b", "c"], extra={"epochs": 3})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors", "model.yaml"]
    loaded, info = load_model(tmp_path / "ckpt")
    assert not loaded.training
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x).embedding, model(x).embedding)
    assert info["class_names"] == ["a", "b", "c"]
    assert info["extra"] == {"epochs": 3}
    assert info["mean"] == list(model.mean) and info["config"] == model.config


def test_wrong_class_names_and_unsaveable_models(model, tmp_path):
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        save_model(model, tmp_path, ["a", "b"])
    with pytest.raises(TypeError, match="no `config`"):
        save_model(torch.nn.Linear(2, 2), tmp_path, [])


def test_load_errors_are_readable(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.yaml is missing"):
        load_model(tmp_path / "nothing")
    save_model(model, tmp_path, ["a", "b", "c"])
    info = yaml.safe_load((tmp_path / "model.yaml").read_text())
    info["config"]["head_dim"] = 16
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(info))
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_model(tmp_path)
