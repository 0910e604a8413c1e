"""Failure 7: any extra file in the system folder (.DS_Store, NOTES.txt) made every index refuse to load, with a
message claiming a different model: the fingerprint hashed every file of the folder.

The fingerprint covers the files the system wrote (listed in system.json); a changed one is named.
"""

from __future__ import annotations

import shutil

import pytest

from fgia.data import read_dataset
from fgia.index import IndexMismatchError
from fgia.retrieval.engine import RetrievalEngine, build_index
from fgia.retrieval.system import CLASSIFIER_FILE, CoarseClassifier


def test_files_the_system_did_not_write_do_not_matter(tiny_system, tiny_synth, tmp_path):
    system = tmp_path / "system"
    shutil.copytree(tiny_system, system)
    build_index(system, read_dataset(tiny_synth), tmp_path / "index", device="cpu")
    (system / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (system / "NOTES.txt").write_text("trained on the March photos\n")
    (system / "models" / "unified" / "Thumbs.db").write_bytes(b"x")
    assert len(RetrievalEngine.load(tmp_path / "index", device="cpu")) > 0


def test_a_changed_system_file_is_named(tiny_system, tiny_synth, tmp_path):
    system = tmp_path / "system"
    shutil.copytree(tiny_system, system)
    build_index(system, read_dataset(tiny_synth), tmp_path / "index", device="cpu")
    clf = CoarseClassifier.load(system / CLASSIFIER_FILE)
    clf.model.intercept_ = clf.model.intercept_ + 1.0
    clf.save(system / CLASSIFIER_FILE)
    with pytest.raises(IndexMismatchError, match=CLASSIFIER_FILE):
        RetrievalEngine.load(tmp_path / "index", device="cpu")
