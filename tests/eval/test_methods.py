"""The methods bench on the tiny synthetic benchmark: rows, reuse of trained models, honest scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fgia.config import save_yaml
from fgia.data import read_dataset, zero_shot_split
from fgia.data.synthetic import SynthConfig
from fgia.eval.methods import (
    MethodsConfig,
    bench_methods,
    holdout_split,
    methods_markdown,
    parse_method,
    run_methods_bench,
    write_methods_table,
    zero_shot_scores,
)
from fgia.features.descriptors import create_descriptor, extract_descriptors
from fgia.models import create_trunk
from fgia.runtime import seed_everything

CFG = MethodsConfig(image_size=32, epochs=1, batch_size=8, device="cpu", whiten=False,
                    model_kwargs={"cnnets": {"head_dim": 32}})


@pytest.fixture(scope="module")
def split(tiny_synth):
    return zero_shot_split(read_dataset(tiny_synth))


def test_zero_shot_scores_hand_computed():
    # 1-D features [0, 1, 10, 11], labels [a, b, a, b]: the one relevant item of each query is at rank
    # 2 (for 0 and 11) or 3 (for 1: 0, 10, then 11; for 10: 11, 1, then 0); the query itself is left out
    feats = np.array([[0.0], [1.0], [10.0], [11.0]])
    scores = zero_shot_scores(feats, np.array([0, 1, 0, 1]))
    assert scores["R@1"] == 0.0 and scores["R@2"] == 0.5 and scores["R@4"] == 1.0
    assert scores["mAP"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert scores["mAP@R"] == 0.0


def test_parse_method_and_unknown_names():
    assert parse_method("gem-offtheshelf") == ("gem", "offtheshelf")
    assert parse_method("neural_codes-finetuned") == ("neural_codes", "finetuned")
    assert parse_method("proxy_anchor") == ("proxy_anchor", None)
    with pytest.raises(KeyError, match="unknown descriptor"):
        parse_method("spoc-offtheshelf")
    with pytest.raises(ValueError, match="unknown method 'resnet'"):
        parse_method("resnet")


def test_holdout_split_without_shipped_split(split):
    aux = split[0]
    unsplit = aux.filter(lambda s: True)
    unsplit.samples = [s.__class__(**{**s.__dict__, "split": None}) for s in aux.samples]
    fit_part, held = holdout_split(unsplit, every=4)
    assert len(fit_part) + len(held) == len(aux) and len(held) == len(aux) // 4
    assert set(held.labels) == set(aux.labels)


def test_offtheshelf_row_equals_direct_retrieval(split):
    train, test = split
    rows = bench_methods(["gap-offtheshelf", "crow-offtheshelf"], train, test, CFG)
    assert [r.method for r in rows] == ["gap-offtheshelf", "crow-offtheshelf"]
    seed_everything(CFG.seed)
    trunk = create_trunk(CFG.backbone).eval()
    feats = extract_descriptors(trunk, create_descriptor("gap"), test.samples, image_size=32, workers=0).image
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    expected = zero_shot_scores(feats, np.asarray(test.labels))
    gap = rows[0]
    assert gap.feature_dim == 512 and gap.top1 is None and gap.ms_per_image > 0
    assert gap.mAP == pytest.approx(expected["mAP"], abs=1e-6)
    assert gap.recall["R@1"] == pytest.approx(expected["R@1"])
    assert 0 < gap.mAP <= 1 and gap.recall["R@1"] <= gap.recall["R@8"]


def test_trained_methods_share_models_and_report_top1(split, tmp_path):
    train, test = split
    cfg = MethodsConfig(**{**CFG.__dict__, "whiten": True})
    methods = ["plain", "gem-finetuned", "proxy_anchor", "vlad-offtheshelf", "neural_codes-offtheshelf",
               "attention_crop"]
    rows = {r.method: r for r in bench_methods(methods, train, test, cfg)}
    assert rows["plain"].top1 is not None and 0 <= rows["plain"].top1 <= 1
    assert rows["proxy_anchor"].top1 is None  # its classifier is never trained
    assert rows["gem-finetuned"].train_seconds == rows["plain"].train_seconds  # one plain model, reused
    n_aux = len(train)
    assert all(r.feature_dim <= n_aux - 1 for r in rows.values())  # whitened: capped by the aux set
    path = write_methods_table(list(rows.values()), tmp_path / "methods", cfg, {"dataset": "tiny"})
    text = path.read_text()
    assert "| attention_crop |" in text and "- dataset: tiny" in text
    data = json.loads(path.with_suffix(".json").read_text())
    assert [r["method"] for r in data["rows"]] == methods
    assert methods_markdown([]).count("\n") == 2


def test_bench_rejects_bad_requests(split):
    train, test = split
    with pytest.raises(ValueError, match="unknown method"):
        bench_methods(["gap-offtheshelf", "nope"], train, test, CFG)
    with pytest.raises(ValueError, match="share classes"):
        bench_methods(["gap-offtheshelf"], train, train, CFG)
    with pytest.raises(ValueError, match="holdout_every"):
        MethodsConfig(holdout_every=1)


def test_run_methods_bench_generates_data_and_reads_yaml_config(tmp_path, capsys):
    cfg = MethodsConfig(**{**CFG.__dict__, "synth": SynthConfig(categories=1, species_per_category=4,
                                                                images_per_species=6, image_size=32)})
    save_yaml(cfg, tmp_path / "methods.yaml")
    rows = run_methods_bench(None, ["mac-offtheshelf"], tmp_path / "methods.yaml", tmp_path / "out" / "table.md")
    assert (tmp_path / "out" / "methods-data" / "manifest.csv").is_file()
    assert len(rows) == 1 and rows[0].method == "mac-offtheshelf"
    saved = json.loads((tmp_path / "out" / "table.json").read_text())
    assert saved["config"]["synth"]["images_per_species"] == 6 and saved["rows"][0]["mAP"] == rows[0].mAP
    assert "| mac-offtheshelf |" in capsys.readouterr().out
