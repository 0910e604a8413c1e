"""The OSFGIR protocol end to end on the tiny synthetic benchmark, and its data/config plumbing."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from fgia.config import load_yaml
from fgia.data import FineGrainedDataset, OsfgirConfig as SplitConfig, Sample
from fgia.eval.osfgir import OsfgirConfig, default_config, run_osfgir, split_by_category
from fgia.retrieval.engine import STAGES
from fgia.retrieval.system import SystemConfig

ROWS = [
    "Coarse full-d", "Coarse 4-d", "Single-stage GAP", "C-to-F image-only", "C-to-F unified", "C-to-F full",
    "C-to-F full + QE",
]


@pytest.fixture(scope="module")
def run(tiny_synth, tmp_path_factory):
    cfg = OsfgirConfig(
        data=tiny_synth,
        split=SplitConfig(aux_fraction=0.5, queries_per_class=2),
        system=SystemConfig(backbone="test_efficientnet", image_size=48, epochs=1, batch_size=8, head_dim=16,
                            coarse_dim=4, part_dim=8, top_k=12, classifier_dims=(2, 0), device="cpu"),
        timing_queries=3,
        examples=2,
        seed=3,
        out_dir=tmp_path_factory.mktemp("osfgir"),
    )
    return cfg, run_osfgir(cfg, progress=False, console=Console(quiet=True))


def test_report_has_every_table(run):
    cfg, report = run
    assert list(report.map_rows) == ROWS
    for row in report.map_rows.values():
        assert set(row) == {"birds", "cars", "food", "all"}
        assert all(0.0 < v <= 1.0 for v in row.values())
    assert list(report.classifier) == ["2", "full"]
    assert set(report.timings_ms) == set(STAGES)
    assert report.timings_ms["total"]["p50"] >= report.timings_ms["fine_feature"]["p50"] > 0
    assert report.seed == 3 and report.split["queries"] == 3 * 2 * 2  # 3 categories x 2 D species x 2
    assert report.split["auxiliary"] + report.split["database"] + report.split["queries"] == 3 * 4 * 8
    assert len(report.examples) == 2 and all(len(ex.hits) == 10 for ex in report.examples)


def test_run_writes_reports_and_resolved_config(run):
    cfg, report = run
    out = cfg.out_dir
    assert json.loads((out / "report.json").read_text())["map_rows"] == report.map_rows
    assert "Table 4" in (out / "report.md").read_text() and "base64" in (out / "report.html").read_text()
    again = load_yaml(OsfgirConfig, out / "osfgir.yaml")
    assert again.system == cfg.system and again.seed == 3 and again.data == cfg.data
    assert (out / "split" / "split.json").is_file() and (out / "index" / "engine.json").is_file()


def test_packaged_demo_config_loads():
    cfg = load_yaml(OsfgirConfig, default_config())
    assert cfg.data is None and cfg.system.qe_top == 5 and cfg.system.coarse_dim == 32


def test_split_by_category_needs_categories(tmp_path):
    samples = [Sample(tmp_path / "a.jpg", 0, category="birds"), Sample(tmp_path / "b.jpg", -1, category="x")]
    per_category, distractors = split_by_category(FineGrainedDataset("d", tmp_path, ["sp"], samples))
    assert list(per_category) == ["birds"] and len(distractors) == 1
    with pytest.raises(ValueError, match="no meta-category"):
        split_by_category(FineGrainedDataset("d", tmp_path, ["sp"], [Sample(tmp_path / "a.jpg", 0)]))
