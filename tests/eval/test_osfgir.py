"""The OSFGIR protocol end to end on the tiny synthetic benchmark, and its data/config plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from fgia.config import load_yaml, save_yaml
from fgia.data import DatasetError, FineGrainedDataset, OsfgirSplit, Sample
from fgia.data import OsfgirConfig as SplitConfig
from fgia.eval.osfgir import (
    OsfgirConfig,
    default_config,
    evaluate_osfgir,
    run_osfgir,
    split_by_category,
)
from fgia.retrieval.engine import STAGES, RetrievalEngine
from fgia.retrieval.system import SelectionConfig, SystemConfig
from fgia.runtime import output_kind

ROWS = ["coarse-32d", "coarse-full", "unified", "c2f-image", "c2f-unified", "c2f", "c2f+qe", "gap-offtheshelf",
        "plain-finetuned"]


@pytest.fixture(scope="module")
def run(tiny_synth, tmp_path_factory):
    cfg = OsfgirConfig(
        data=tiny_synth,
        split=SplitConfig(aux_fraction=0.5, queries_per_class=2),
        system=SystemConfig(backbone="test_efficientnet", image_size=48, epochs=1, category_epochs=1, batch_size=8,
                            coarse_dim=4, part_dim=8, top_k=12, top_k_fraction=None, classifier_dims=(2, 0),
                            selection=SelectionConfig(validation_fraction=0.0), device="cpu"),
        baselines=["gap-offtheshelf", "plain"],
        timing_queries=3,
        examples=2,
        seed=3,
        out_dir=tmp_path_factory.mktemp("osfgir"),
    )
    return cfg, run_osfgir(cfg, progress=False, console=Console(quiet=True))


def test_report_has_every_table(run):
    cfg, report = run
    assert [r["method"] for r in report.rows] == ROWS
    for row in report.rows:
        assert set(row["per_category"]) == {"birds", "cars", "food"}
        assert 0.0 < row["mAP"] <= 1.0 and all(0.0 < v <= 1.0 for v in row["per_category"].values())
        assert row["input_size"] == 48 and row["split_seed"] == 3 and row["backbone"] and row["label"]
        assert row["dim"] > 0 and 0.0 <= row["R@1"] <= 1.0 and row["ms_per_query"] > 0
    assert report.row("gap-offtheshelf")["epochs"] == 0 and report.row("plain-finetuned")["epochs"] == 1
    assert report.row("unified")["trainable"].startswith("stages after the first")
    assert list(report.classifier) == ["2", "full"]
    assert set(report.timings_ms) == set(STAGES)
    assert report.timings_ms["total"]["p50"] >= report.timings_ms["features"]["p50"] > 0
    assert report.selection is None and {"trunk_cache", "train", "index"} <= set(report.seconds)
    assert report.seed == 3 and report.split["queries"] == 3 * 2 * 2  # 3 categories x 2 D species x 2
    assert report.split["auxiliary"] + report.split["database"] + report.split["queries"] == 3 * 4 * 8
    assert len(report.examples) == 2 and all(len(ex.hits) == 10 for ex in report.examples)


def test_run_writes_reports_and_resolved_config(run):
    cfg, report = run
    out = cfg.out_dir
    assert json.loads((out / "report.json").read_text())["rows"] == report.rows
    assert "Table 4" in (out / "report.md").read_text() and "base64" in (out / "report.html").read_text()
    again = load_yaml(OsfgirConfig, out / "osfgir.yaml")
    assert again.system == cfg.system and again.seed == 3 and again.data == cfg.data
    assert (out / "split" / "split.json").is_file() and (out / "index" / "manifest.json").is_file()
    assert output_kind(out) == "osfgir run" and output_kind(out / "index") == "index"


@pytest.mark.parametrize("name", ["demo.yaml", "osfgir.yaml", "real.yaml", "real_quick.yaml"])
def test_packaged_configs_load(name):
    cfg = load_yaml(OsfgirConfig, default_config(name))
    assert cfg.data is None and cfg.system.qe_top == 5 and cfg.system.coarse_dim == 32
    with pytest.raises(FileNotFoundError, match="no packaged config"):
        default_config("nope.yaml")


def test_split_by_category(tmp_path):
    samples = [Sample(tmp_path / "a.jpg", 0, category="birds"), Sample(tmp_path / "b.jpg", -1, category="x")]
    per_category, distractors = split_by_category(FineGrainedDataset("d", tmp_path, ["sp"], samples))
    assert list(per_category) == ["birds"] and len(distractors) == 1
    # a set without meta-categories is one category named after its folder
    root = tmp_path / "museum_birds"
    per_category, distractors = split_by_category(FineGrainedDataset("d", root, ["sp"], [Sample(root / "a.jpg", 0)]))
    assert list(per_category) == ["museum_birds"] and distractors is None
    mixed = [Sample(root / "a.jpg", 0, category="birds"), Sample(root / "b.jpg", 0)]
    with pytest.raises(ValueError, match="no meta-category"):
        split_by_category(FineGrainedDataset("d", root, ["sp"], mixed))
    with pytest.raises(DatasetError, match="no labelled images"):
        split_by_category(FineGrainedDataset("d", root, ["sp"], [Sample(root / "a.jpg", -1)]))


def test_coarse_row_matches_a_hand_computed_map(run):
    cfg, report = run
    engine = RetrievalEngine.load(cfg.out_dir / "index", device="cpu")
    queries = OsfgirSplit.load(cfg.out_dir / "split").queries
    qf = engine.query_features(queries.samples)
    db, db_labels = engine.store.array("unified"), engine.labels()
    aps = []
    for q, label in zip(qf.unified, np.array(queries.labels)[qf.index]):
        relevant = db_labels[np.argsort(((db - q) ** 2).sum(1), kind="stable")] == label
        ranks = np.flatnonzero(relevant) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    assert report.row("unified")["mAP"] == pytest.approx(np.mean(aps), abs=1e-4)


def test_evaluate_osfgir_runs_a_config_file_and_prints_tables(run, tmp_path):
    cfg, report = run
    save_yaml(cfg, tmp_path / "cfg.yaml")
    console = Console(record=True, width=120)
    again = evaluate_osfgir(config=tmp_path / "cfg.yaml", out_dir=tmp_path / "out", progress=False, console=console)
    text = console.export_text()
    assert "Table 5: retrieval mAP" in text and "Table 6" in text and str(tmp_path / "out" / "report.html") in text
    assert [r["mAP"] for r in again.rows] == [r["mAP"] for r in report.rows]  # same config and seed: same numbers


def test_baselines_rank_the_images_the_index_holds(run, tmp_path):
    """The index skips repeated files (same content, another path); every method must rank what it holds."""
    import shutil
    from dataclasses import replace as dc_replace

    from fgia.eval.osfgir import indexed_samples
    from fgia.retrieval.engine import build_index

    cfg, _ = run
    database = OsfgirSplit.load(cfg.out_dir / "split").database
    copy = tmp_path / "copy.png"
    shutil.copyfile(database.samples[1].path, copy)
    with_copy = dc_replace(database, samples=[*database.samples[:3], dc_replace(database.samples[1], path=copy),
                                              *database.samples[3:]])
    result = build_index(cfg.out_dir / "system", with_copy, tmp_path / "index", device="cpu")
    assert result.duplicates == 1
    engine = RetrievalEngine.load(tmp_path / "index", device="cpu")
    rows = indexed_samples(engine, with_copy)
    assert rows == [i for i in range(len(with_copy)) if i != 3]
    assert [with_copy.samples[i].label for i in rows] == [with_copy.classes.index(engine.classes[label])
                                                          if label >= 0 else -1 for label in engine.labels()]
