"""A user's own collection through the CLI: class folders or composed sets train, a plain photo folder is indexed,
searched, exported and demonstrated; unlabelled data cannot train and says what each layout needs."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from test_cli import (
    run_cli,  # tests/cli is on sys.path (pytest's rootdir-relative imports)
)

from fgia.data import read_dataset

TINY = {"backbone": "test_efficientnet", "image_size": 48, "epochs": 1, "batch_size": 8, "head_dim": 16,
        "coarse_dim": 4, "part_dim": 8, "top_k": 12, "classifier_dims": [2, 0], "device": "cpu",
        "selection": {"validation_fraction": 0.0}}


@pytest.fixture(scope="module")
def collection(tiny_synth, tmp_path_factory):
    """Class folders per meta-category (birds/, cars/) and a flat folder of food photos, copied from the tiny
    synthetic benchmark."""
    root = tmp_path_factory.mktemp("collection")
    ds = read_dataset(tiny_synth)
    for s in ds.samples:
        category, species = ds.classes[s.label].split("/")
        target = root / "photos" if category == "food" else root / category / species
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, target / f"{species}-{s.path.name}")
    (root / "photos" / "notes.txt").write_text("not a photo")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"system": TINY}))
    return root


def test_training_on_a_photo_folder_explains_the_layouts(collection, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "train", str(collection / "photos"), "--config",
                             str(collection / "tiny.yaml"))
    assert code == 1 and "Traceback" not in out + err
    [line] = [line for line in err.splitlines() if line.strip()] or [""]
    assert "no labels" in line and "is a database" in line and "<class>/ folders" in line


def test_one_labelled_set_trains_a_one_category_system(collection, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "train", str(collection / "birds"), "--out", str(tmp_path / "a"),
                           "--config", str(collection / "tiny.yaml"), "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "system.json").read_text())["categories"] == ["birds"]
    code, out, err = run_cli(monkeypatch, capsys, "train", str(collection / "birds"), "--category", "songbirds",
                             "--out", str(tmp_path / "b"), "--config", str(collection / "tiny.yaml"), "--quiet")
    assert code == 0, err
    assert "".join(out.split()) == f"systemwrittento{tmp_path / 'b'}"  # --quiet: no progress, no log lines
    assert json.loads((tmp_path / "b" / "system.json").read_text())["categories"] == ["songbirds"]


def test_composed_sets_train_index_a_photo_folder_search_and_export(collection, tmp_path, monkeypatch, capsys):
    system, index = tmp_path / "system", tmp_path / "index"
    config = tmp_path / "run.yaml"  # the config's datasets: list is the same as --aux
    config.write_text(yaml.safe_dump({"datasets": [{"category": "birds", "path": str(collection / "birds")},
                                                   {"category": "cars", "path": str(collection / "cars")}],
                                      "system": TINY}))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", str(config), "--out", str(system), "--quiet")
    assert code == 0, err
    info = json.loads((system / "system.json").read_text())
    assert info["categories"] == ["birds", "cars"] and info["auxiliary_images"] == 2 * 4 * 8
    code, _, err = run_cli(monkeypatch, capsys, "train", "--aux", f"birds={collection / 'birds'}", "--aux",
                           f"cars={collection / 'cars'}", "--config", str(collection / "tiny.yaml"),
                           "--out", str(tmp_path / "again"), "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "system.json").read_text())["categories"] == ["birds", "cars"]

    code, out, err = run_cli(monkeypatch, capsys, "index", str(system), str(collection / "photos"),
                             "--out", str(index), "--quiet")
    assert code == 0, err
    said = " ".join(out.split())  # rich wraps long lines
    assert "added 32 images" in said and "unlabelled: search works, mAP and R@K evaluation need labels" in said
    query = sorted((collection / "photos").glob("*.jpg"))[3]
    code, _, err = run_cli(monkeypatch, capsys, "search", str(index), str(query), "--json", str(tmp_path / "h.json"),
                           "--device", "cpu")
    assert code == 0, err
    [hits] = json.loads((tmp_path / "h.json").read_text())
    assert hits["paths"][0] == str(query.resolve()) and hits["labels"] is None

    code, out, err = run_cli(monkeypatch, capsys, "export", str(system), "--format", "onnx",
                             "--out", str(tmp_path / "onnx"))
    assert code == 0, err
    assert (tmp_path / "onnx" / "extraction.onnx").stat().st_size > 0
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["categories"] == ["birds", "cars"]


def test_demo_on_an_unlabelled_database_says_which_metrics_need_labels(collection, tmp_path, monkeypatch, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({"system": TINY, "baselines": ["gap-offtheshelf"], "timing_queries": 2,
                                      "examples": 2, "split": {"query_fraction": 0.2}}))
    code, out, err = run_cli(monkeypatch, capsys, "demo", "--data", str(collection / "photos"), "--aux",
                             f"birds={collection / 'birds'}", "--out", str(tmp_path / "demo"),
                             "--config", str(config))
    assert code == 0, err
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["split"]["auxiliary_species"] == 4 and report["split"]["queries"] == round(0.2 * 32)
    assert all(row["mAP"] is None and row["R@1"] is None for row in report["rows"])
    assert report["classifier"] == {}
    assert all(hit["correct"] is None for ex in report["examples"] for hit in ex["hits"])
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert "Metrics left empty: they need labels" in markdown and "mAP and R@1" in markdown
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--data", str(collection / "photos"),
                           "--out", str(tmp_path / "nolabels"), "--config", str(config))
    assert code == 1 and "no labelled images: it is a database" in err
