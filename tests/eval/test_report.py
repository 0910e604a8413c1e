"""Report rendering: every table and number reaches Markdown/JSON/HTML; HTML embeds images and marks hits."""

from __future__ import annotations

import json
import re

from PIL import Image
from rich.console import Console

from fgia.eval.report import Hit, OsfgirReport, QueryExample, print_report, write_report


def _report(tmp_path) -> OsfgirReport:
    paths = []
    for i, colour in enumerate(["red", "blue", "green"]):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (40, 30), colour).save(p)
        paths.append(str(p))
    return OsfgirReport(
        config={"system": {"backbone": "resnet18"}},
        seed=7,
        split={"auxiliary": 10, "database": 20, "queries": 4},
        versions={"fgia": "0.1.0"},
        map_rows={
            "Coarse 32-d": {"birds": 0.25, "cars": 0.5, "all": 0.375},
            "C-to-F full": {"birds": 0.5, "cars": 0.75, "all": 0.625},
            "C-to-F full + QE": {"birds": 0.625, "cars": 0.8125, "all": 0.71875},
        },
        methods=[{"method": "C-to-F full + QE", "backbone": "resnet18", "weights": None, "input_size": 64,
                  "epochs": 2, "split_seed": 0, "dim": 256, "mAP": 0.71875, "R@1": 0.75, "ms_per_query": 33.25}],
        classifier={"8": 0.5, "full": 1.0},
        timings_ms={"total": {"mean": 12.5, "p50": 11.0, "p90": 20.0}},
        examples=[
            QueryExample(
                path=paths[0],
                label="sp1",
                category="birds",
                predicted_category="birds",
                hits=[Hit(paths[1], 0.1, True), Hit(paths[2], 0.2, False)],
            )
        ],
        elapsed_s=3.0,
    )


def test_write_report_contains_every_table(tmp_path):
    report = _report(tmp_path)
    paths = write_report(report, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "| C-to-F full + QE | 0.6250 | 0.8125 | 0.7188 |" in md  # columns sorted, "all" last
    assert "| full | 1.0000 |" in md and "| total | 12.50 | 11.00 | 20.00 |" in md
    table7 = md.split("## Table 7")[1].split("## Table 4")[0]
    assert "| C-to-F full + QE | 64 | 256 | 0.7188 | 0.7500 | 33.2 |" in table7
    assert json.loads(paths["json"].read_text())["map_rows"]["Coarse 32-d"]["cars"] == 0.5
    assert "seed: 7" in md and '"backbone": "resnet18"' in md


def test_html_embeds_thumbnails_and_marks_right_and_wrong(tmp_path):
    page = write_report(_report(tmp_path), tmp_path / "out")["html"].read_text()
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 3
    assert page.count('class="right"') == 1 and page.count('class="wrong"') == 1
    assert "file:" not in page and str(tmp_path) not in page  # opens offline, anywhere


def test_print_report_prints_tables():
    console = Console(record=True, width=120)
    report = OsfgirReport({}, 0, {}, {}, {"Coarse 32-d": {"all": 0.5}}, [], {"32": 0.9}, {})
    print_report(report, console)
    text = console.export_text()
    assert "Table 5" in text and "0.5000" in text and "0.9000" in text
