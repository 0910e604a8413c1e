"""The extraction spec a model carries: validated, saved in model.yaml, restored on load."""

from __future__ import annotations

import pytest
import yaml

from fgia.models import ExtractionSpec, create_model, load_model, model_spec, save_model


def test_spec_round_trips_through_a_checkpoint(tmp_path):
    model = create_model("plain", num_classes=3, backbone="test_resnet")
    spec = model_spec(model, image_size=96, region_zoom=2.0, threshold=0.4)
    save_model(model, tmp_path, ["a", "b", "c"], spec=spec)
    saved = yaml.safe_load((tmp_path / "model.yaml").read_text())["spec"]
    assert saved["image_size"] == 96 and saved["region_zoom"] == 2.0 and saved["mean"] == list(model.mean)
    loaded, info = load_model(tmp_path)
    assert loaded.spec == info["spec"] == spec
    assert model_spec(loaded, regions=False) == spec.with_(regions=False)


def test_a_model_without_a_spec_gets_the_defaults_with_its_normalisation():
    model = create_model("plain", num_classes=2, backbone="test_resnet")
    spec = model_spec(model)
    assert spec.image_size == 224 and spec.mean == tuple(model.mean) and spec.std == tuple(model.std)


@pytest.mark.parametrize("bad", [{"image_size": 4}, {"region_zoom": 0.5}, {"threshold": 1.0}])
def test_invalid_specs_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ExtractionSpec(**bad)


def test_unknown_saved_keys_are_named():
    with pytest.raises(ValueError, match="crop_pct"):
        ExtractionSpec.from_dict({"image_size": 64, "crop_pct": 0.875})
