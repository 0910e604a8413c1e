"""Exported extraction networks give fgia's features: ONNX through onnxruntime, and torch.export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from fgia.data import load_image
from fgia.retrieval.export import EXPORT_FILE, export_system
from fgia.retrieval.system import load_system

ort = pytest.importorskip("onnxruntime")


def _preprocess(images, manifest) -> np.ndarray:
    """export.json's preprocessing, written from its description (not with fgia's extraction code)."""
    spec = manifest["input"]
    size = spec["image_size"]
    batch = [F.resize(F.pil_to_tensor(im), [size, size], antialias=True) for im in images]
    x = F.to_dtype(torch.stack(batch), torch.float32, scale=True)
    return F.normalize(x, spec["mean"], spec["std"]).numpy()


def _expected(system, images):
    return system.features(images=images)  # what indexing and querying compute


def _check(outputs: dict[str, np.ndarray], expected) -> None:
    for name, feats in expected.items():
        assert np.abs(outputs[f"{name}/embedding"] - feats.image).max() <= 1e-4, name
        if f"{name}/logits" in outputs:
            assert (outputs[f"{name}/logits"].argmax(1) == feats.predicted).all()
        if f"{name}/maps" in outputs:
            maps = outputs[f"{name}/maps"]
            best = maps.mean((2, 3)).argmax(1)
            assert np.abs(maps[np.arange(len(maps)), best] - feats.maps).max() <= 1e-4


def test_onnx_export_gives_the_systems_features_through_onnxruntime(built, tmp_path):
    system = load_system(built.system_dir, device="cpu")
    assert len(system.models) > 2  # unified, category models and off-the-shelf over one frozen trunk
    result = export_system(system, tmp_path / "export", "onnx")
    manifest = json.loads(result.manifest.read_text())
    assert manifest["fingerprint"] == system.fingerprint and manifest["models"] == list(system.group.models)
    # every model the graph runs is listed, and every listed one has its outputs
    assert {f"{name}/embedding" for name in manifest["models"]} <= set(manifest["outputs"])
    assert {o.split("/")[0] for o in manifest["outputs"]} == set(manifest["models"]) >= set(system.models)
    images = [load_image(s.path) for s in built.split.database.samples[:5]]  # batch 5, exported with 2
    session = ort.InferenceSession(str(result.graph), providers=["CPUExecutionProvider"])
    outputs = dict(zip(manifest["outputs"], session.run(None, {"images": _preprocess(images, manifest)})))
    _check(outputs, _expected(system, images))


def test_torch_export_with_mirror_averaging(built, tmp_path):
    system = load_system(built.system_dir, device="cpu")
    system.config.flip = True  # features averaged with the mirror image's, inside the graph too
    result = export_system(system, tmp_path / "export", "torch")
    manifest = json.loads(result.manifest.read_text())
    assert manifest["flip_averaged"] is True
    images = [load_image(s.path) for s in built.split.queries.samples[:3]]
    program = torch.export.load(str(result.graph))
    with torch.no_grad():
        flat = program.module()(torch.from_numpy(_preprocess(images, manifest)))
    _check(dict(zip(manifest["outputs"], (t.numpy() for t in flat))), _expected(system, images))


def test_export_refuses_a_folder_that_holds_something_else(built, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_system(built.system_dir, tmp_path, "torch")
    assert (tmp_path / "mine.txt").read_text() == "keep me" and not (tmp_path / EXPORT_FILE).exists()
    with pytest.raises(ValueError, match="unknown export format"):
        export_system(built.system_dir, tmp_path / "x", "tflite")
