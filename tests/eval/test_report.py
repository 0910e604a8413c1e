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
        rows=[_row("coarse-32d", "Coarse 32-d", {"birds": 0.25, "cars": 0.5}, 0.375, 32),
              _row("c2f", "C-to-F", {"birds": 0.5, "cars": 0.75}, 0.625, 256),
              _row("c2f+qe", "C-to-F + QE", {"birds": 0.625, "cars": 0.8125}, 0.71875, 256)],
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
        selection={"fit_species": 8, "validation_species": 2, "validation_images": 12, "base_val_mAP": 0.4,
                   "heads": {"cosine": [0.3, 0.45]},
                   "steps": [{"choice": "head cosine, 2 epochs", "val_mAP": 0.45, "kept": True},
                             {"choice": "region part", "val_mAP": 0.5, "kept": True}]},
        seconds={"train": 12.0},
        elapsed_s=3.0,
    )


def _row(method, label, per_category, mean, dim):
    return {"method": method, "label": label, "backbone": "resnet18", "weights": None, "input_size": 64, "epochs": 2,
            "head": "cosine", "trainable": "all", "split_seed": 0, "dim": dim, "mAP": mean, "R@1": 0.75,
            "per_category": per_category, "ms_per_query": 33.25}


def test_write_report_contains_every_table(tmp_path):
    report = _report(tmp_path)
    paths = write_report(report, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "| C-to-F + QE | 0.6250 | 0.8125 | 0.7188 |" in md  # columns sorted, "all" last
    assert "| full | 1.0000 |" in md and "| total | 12.50 | 11.00 | 20.00 |" in md
    table7 = md.split("## Table 7")[1].split("## Table 4")[0]
    assert "| c2f+qe | 64 | 256 | 0.7188 | 0.7500 | 33.2 | 2 | cosine | all |" in table7
    assert json.loads(paths["json"].read_text())["rows"][0]["per_category"]["cars"] == 0.5
    assert "seed: 7" in md and '"backbone": "resnet18"' in md and "seconds train: 12.0" in md
    chosen = md.split("## Recipe chosen")[1]
    assert "| head cosine, epoch 2 | 0.4500 |" in chosen and "| region part | 0.5000 | kept |" in chosen


def test_html_embeds_thumbnails_and_marks_right_and_wrong(tmp_path):
    page = write_report(_report(tmp_path), tmp_path / "out")["html"].read_text()
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 3
    assert page.count('class="right"') == 1 and page.count('class="wrong"') == 1
    assert "file:" not in page and str(tmp_path) not in page  # opens offline, anywhere


def test_print_report_prints_tables():
    console = Console(record=True, width=120)
    report = OsfgirReport({}, 0, {}, {}, [_row("coarse-32d", "Coarse 32-d", {}, 0.5, 32)], {"32": 0.9}, {})
    print_report(report, console)
    text = console.export_text()
    assert "Table 5" in text and "0.5000" in text and "0.9000" in text
