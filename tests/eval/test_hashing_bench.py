"""`fgia bench hashing`: splits, targets by hand, and the whole benchmark on a tiny synthetic set."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fgia.data import read_dataset
from fgia.eval.hashing import (
    HashingBenchConfig,
    HashingRow,
    bench_hashing,
    classification_split,
    hashing_markdown,
    hashing_targets,
    run_hashing_bench,
)
from fgia.eval.realdata import Recipe

TINY_RECIPE = Recipe(backbone="test_efficientnet", weights=None, image_size=48, epochs=1, batch_size=8,
                     device="cpu")


def test_classification_split_official_or_per_class(tiny_synth):
    ds = read_dataset(tiny_synth)
    database, queries = classification_split(ds)
    assert {s.split for s in database.samples} == {"train"} and {s.split for s in queries.samples} == {"test"}
    unsplit = replace(ds, samples=[replace(s, split=None) for s in ds.samples])
    database, queries = classification_split(unsplit, query_fraction=0.25, seed=1)
    assert database.classes == queries.classes == ds.classes
    assert not {s.path for s in database.samples} & {s.path for s in queries.samples}
    assert len(database) + len(queries) == len(ds)
    for label in range(len(ds.classes)):  # 8 images per class: 2 queries, 6 in the database
        assert sum(s.label == label for s in queries.samples) == 2
    again = classification_split(unsplit, query_fraction=0.25, seed=1)[1]
    assert [s.path for s in again.samples] == [s.path for s in queries.samples]


def test_targets_by_hand():
    def row(dataset, method, bits, value):
        return HashingRow(dataset, "classification", method, bits, value, 0.0, 1, 0.0)

    rows = [row("cub100", "real-valued", 0, 0.50), row("cub100", "a2net_hash", 48, 0.47), row("cub100", "itq", 48, 0.2),
            row("stanford_cars", "real-valued", 0, 0.40), row("stanford_cars", "a2net_hash", 48, 0.30),
            row("stanford_cars", "itq", 48, 0.05), row("stanford_cars", "a2net_hash", 12, 0.9)]
    targets = hashing_targets(rows, HashingBenchConfig())
    assert targets["cub_48bit_over_real"] == {"value": 0.94, "threshold": 0.9, "op": ">=", "met": True}
    assert targets["cars_48bit_over_real"]["value"] == 0.75 and not targets["cars_48bit_over_real"]["met"]
    assert targets["cub_48bit_minus_itq"]["value"] == pytest.approx(0.27) and targets["cub_48bit_minus_itq"]["met"]
    assert targets["cars_48bit_minus_itq"]["value"] == pytest.approx(0.25)


def test_bench_on_a_tiny_set(tiny_synth, tmp_path):
    ds = read_dataset(tiny_synth)
    cfg = HashingBenchConfig(bits=(8, 12), hash_epochs=1, pk_images=2, search_k=5, recipe=TINY_RECIPE)
    seen = []
    payload = bench_hashing({"tiny": ds}, cfg, on_progress=seen.append, log=lambda line: None)
    assert len(seen) == 2  # one call per split
    rows = payload["rows"]
    methods = ["gap-offtheshelf", "itq", "itq", "lsh", "lsh", "real-valued", "a2net_hash", "a2net_hash",
               "deep_hash", "deep_hash"]
    for split in ("classification", "zero-shot"):
        mine = [r for r in rows if r["split"] == split]
        assert [r["method"] for r in mine] == methods
        assert all(0 < r["mAP"] <= 1 and r["ms_per_query"] > 0 for r in mine)
        assert {r["bits"]: r["bytes_per_image"] for r in mine if r["bits"]} == {8: 1, 12: 2}
        assert all(r["bytes_per_image"] > 2 and r["bytes_per_image"] % 4 == 0 for r in mine if not r["bits"])  # float32
    assert payload["splits"]["tiny/zero-shot"]["leave_one_out"] and payload["targets"] == {}
    page = hashing_markdown(payload)
    assert "## tiny, zero-shot split" in page and "| a2net_hash |" in page and "A2-Net" in page


def test_results_files_are_written(tiny_synth, tmp_path, monkeypatch):
    ds = read_dataset(tiny_synth)
    monkeypatch.setattr("fgia.eval.realdata.read_shared", lambda root, names, cap: {"tiny": ds})
    cfg = HashingBenchConfig(splits=("zero-shot",), bits=(8,), learned=("deep_hash",), unsupervised=("lsh",),
                             hash_epochs=1, pk_images=2, recipe=TINY_RECIPE)
    run_hashing_bench("unused", cfg, tmp_path, name="h")
    payload = json.loads((tmp_path / "h_cpu.json").read_text())
    assert {"targets", "config", "splits", "seed", "elapsed_s", "rows", "published_cub200"} <= set(payload)
    assert (tmp_path / "h_cpu.md").read_text().startswith("# Fine-grained hashing")


def test_config_checks():
    with pytest.raises(ValueError, match="splits"):
        HashingBenchConfig(splits=("official",))
    with pytest.raises(ValueError, match="unknown methods"):
        HashingBenchConfig(learned=("exchnet",))
