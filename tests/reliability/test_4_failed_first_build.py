"""Failure 4: a failed or interrupted first `fgia index` left a stub that blocked every retry (FileExistsError
without --append, FileNotFoundError engine.json with it); all-unreadable input reported a scikit-learn message.

A failed first build leaves nothing behind; an interrupted one leaves a state the same command resumes.
"""

from __future__ import annotations

import csv

from reliability_helpers import one_error_line, run_python

from fgia.data import read_dataset
from fgia.retrieval.engine import RetrievalEngine


def test_all_unreadable_images_is_one_clear_line_and_leaves_nothing(cli, tiny_system, copy_data, tmp_path):
    manifest = copy_data(tmp_path / "data", rows=6)
    for sample in read_dataset(manifest).samples:
        sample.path.write_bytes(b"not an image")
    index = tmp_path / "index"
    code, _, err = cli("index", tiny_system, manifest, "--out", index)
    assert code == 1
    line = one_error_line(err)
    assert "none of the 6 images" in line and "sample(s)" not in line
    assert not index.exists() and list(tmp_path.iterdir()) == [tmp_path / "data"]

    good = copy_data(tmp_path / "good", rows=6)
    code, out, err = cli("index", tiny_system, good, "--out", index)  # the retry needs no flag
    assert code == 0, err
    assert "6 in total" in out


def test_an_interrupted_first_build_is_resumed_by_the_same_command(cli, tiny_system, tiny_synth, tmp_path):
    index = tmp_path / "index"
    killed = run_python(f"""
import os
from fgia.data import read_dataset
from fgia.index import FeatureStore
from fgia.retrieval.engine import build_index

commit, commits = FeatureStore.append, []
def die_on_second_commit(self, *args, **kwargs):
    commit(self, *args, **kwargs)
    commits.append(1)
    if len(commits) == 2:
        os._exit(9)
FeatureStore.append = die_on_second_commit
build_index({str(tiny_system)!r}, read_dataset({str(tiny_synth)!r}), {str(index)!r}, device="cpu", chunk_size=8)
""")
    assert killed.returncode == 9, killed.stderr

    code, out, err = cli("index", tiny_system, tiny_synth, "--out", index)
    assert code == 0, err
    n = len(read_dataset(tiny_synth))
    assert f"{n} in total" in out and "16 already indexed" in out
    engine = RetrievalEngine.load(index, device="cpu")
    assert sorted(r.path for r in engine.rows) == sorted({r.path for r in engine.rows}) and len(engine) == n
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no staging folder left behind


def test_append_to_a_missing_index_says_how_to_build_one(cli, tiny_system, tiny_synth, tmp_path):
    code, _, err = cli("index", tiny_system, tiny_synth, "--out", tmp_path / "none", "--append")
    assert code == 1
    line = one_error_line(err)
    assert "without --append" in line
    assert not (tmp_path / "none").exists()


def test_a_manifest_listing_unreadable_images_only_is_not_left_as_a_stub(cli, tiny_system, tmp_path):
    manifest = tmp_path / "gone.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "category"], ["missing1.jpg", "a", "birds"],
                                 ["missing2.jpg", "b", "birds"]])
    code, _, err = cli("index", tiny_system, manifest, "--out", tmp_path / "index")
    assert code == 1 and "none of the 2 images" in one_error_line(err)
    assert not (tmp_path / "index").exists()
