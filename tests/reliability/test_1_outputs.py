"""Failure 1: a command pointed at a folder of the user's files deleted or overwrote them.

Every writing command refuses a non-empty output folder that is not its own kind of output (one line naming the
folder and --force), and never deletes a file it did not list itself; --force builds the new output beside the
old one and keeps everything fgia did not write.
"""

from __future__ import annotations

import yaml
from reliability_helpers import files_of, one_error_line

from fgia.retrieval.engine import RetrievalEngine

USER_FILES = {"notes.tmp": b"my notes", "sub/a.g1.npy": b"my array", "old.g3.fidx": b"my index",
              "engine.json": b'{"mine": true}', "results.g2.csv": b"a,b\n1,2\n"}


def _user_folder(path):
    for name, data in USER_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def _kept_copies(root):
    """Every copy of a user file anywhere under `root` (a kept folder included), by relative name."""
    found = {}
    for path in root.rglob("*"):
        for name, data in USER_FILES.items():
            if path.is_file() and path.as_posix().endswith(name) and path.read_bytes() == data:
                found[name] = path
    return found


def test_index_refuses_a_folder_of_user_files_and_force_keeps_them(cli, tiny_system, tiny_synth, tmp_path):
    target = _user_folder(tmp_path / "mine")
    code, _, err = cli("index", tiny_system, tiny_synth, "--out", target)
    assert code == 1
    line = one_error_line(err)
    assert str(target) in line and "--force" in line
    assert files_of(target) == USER_FILES

    code, out, err = cli("index", tiny_system, tiny_synth, "--out", target, "--force")
    assert code == 0, err
    assert len(RetrievalEngine.load(target, device="cpu")) > 0
    kept = _kept_copies(tmp_path)
    assert set(kept) == set(USER_FILES)  # nothing of the user's was deleted ...
    assert all(target not in p.parents for p in kept.values())  # ... it was moved aside, and the output says where
    assert str(kept["notes.tmp"].parent) in out + err


def test_eval_refuses_a_folder_that_is_not_an_eval_output(cli, tmp_path):
    target = tmp_path / "work"
    for name, data in {"index/engine.json": b"{}", "index/mine.txt": b"keep", "data/manifest.csv": b"path,label\n",
                       "report.md": b"# my report"}.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    before = files_of(target)
    tiny = {"synth": {"categories": 2, "species_per_category": 2, "images_per_species": 4, "image_size": 48},
            "system": {"backbone": "test_efficientnet", "image_size": 48, "epochs": 1, "batch_size": 4,
                       "head_dim": 8, "coarse_dim": 2, "part_dim": 4, "top_k": 4, "classifier_dims": [2],
                       "device": "cpu"},
            "baselines": [], "timing_queries": 1, "examples": 1}
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(tiny))
    code, _, err = cli("eval", "--config", config, "--out", target)
    assert code == 1
    assert str(target) in one_error_line(err)
    assert files_of(target) == before


def test_synth_refuses_a_user_manifest_but_replaces_its_own_output(cli, tmp_path):
    target = tmp_path / "bench"
    target.mkdir()
    (target / "manifest.csv").write_text("path,label\nmy/photo.jpg,sparrow\n")
    args = ["synth", target, "--categories", "1", "--species", "2", "--images", "2", "--size", "32", "--workers", "1"]
    code, _, err = cli(*args)
    assert code == 1 and "--force" in one_error_line(err)
    assert (target / "manifest.csv").read_text() == "path,label\nmy/photo.jpg,sparrow\n"

    own = tmp_path / "own"
    assert cli(*args[:1], own, *args[2:])[0] == 0
    first = files_of(own)
    assert cli(*args[:1], own, *args[2:], "--species", "3")[0] == 0  # re-running on its own output replaces it
    assert files_of(own) != first and len(list((own / "images").rglob("*.jpg"))) == 6


def test_train_refuses_to_retrain_over_a_system_or_a_users_folder(cli, tiny_system, tiny_synth, tiny_config,
                                                                  tmp_path):
    import shutil

    system = tmp_path / "system"
    shutil.copytree(tiny_system, system)
    code, _, err = cli("index", system, tiny_synth, "--out", tmp_path / "index")
    assert code == 0, err
    before = files_of(system)
    code, _, err = cli("train", tiny_synth, "--out", system, "--config", tiny_config)
    assert code == 1 and "--force" in one_error_line(err)
    assert files_of(system) == before
    assert len(RetrievalEngine.load(tmp_path / "index", device="cpu")) > 0  # its index still loads

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "system.yaml").write_text("my: settings\n")
    code, _, err = cli("train", tiny_synth, "--out", foreign, "--config", tiny_config)
    assert code == 1 and str(foreign) in one_error_line(err)
    assert (foreign / "system.yaml").read_text() == "my: settings\n"
