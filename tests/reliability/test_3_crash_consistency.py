"""Failure 3: SIGKILL between the store commit and the engine.json rewrite left labels without class names
(IndexError on every search); re-running the append then duplicated the images, and appending the same folder
twice doubled every hit.

Class names are committed with the rows they name, in one manifest; --append skips images already indexed (by
path and by content) and says how many.
"""

from __future__ import annotations

from reliability_helpers import run_python

from fgia.data import load_image, read_dataset
from fgia.retrieval.engine import RetrievalEngine, build_index


def _parts(manifest):
    ds = read_dataset(manifest)
    return ds.filter(lambda s: s.category == "birds"), ds.filter(lambda s: s.category != "birds")


def test_kill_right_after_a_commit_leaves_a_searchable_index_and_the_rerun_resumes(tiny_system, tiny_synth,
                                                                                   tmp_path):
    birds, others = _parts(tiny_synth)
    index = tmp_path / "index"
    build_index(tiny_system, birds, index, device="cpu")
    killed = run_python(f"""
import os
from fgia.data import read_dataset
from fgia.index import FeatureStore
from fgia.retrieval.engine import build_index

commit = FeatureStore.append
def commit_then_die(self, *args, **kwargs):
    commit(self, *args, **kwargs)
    os._exit(9)  # SIGKILL-like: no cleanup, no finally blocks
FeatureStore.append = commit_then_die
others = read_dataset({str(tiny_synth)!r}).filter(lambda s: s.category != "birds")
build_index({str(tiny_system)!r}, others, {str(index)!r}, append=True, device="cpu", chunk_size=8)
""")
    assert killed.returncode == 9, killed.stderr

    engine = RetrievalEngine.load(index, device="cpu")
    assert len(engine) == len(birds) + 8
    assert max(engine.labels()) < len(engine.classes)  # every stored label has its name
    sample = others.samples[0]
    [result] = engine.search([load_image(sample.path)], top_k=3)
    assert result.labels[0] == others.classes[sample.label]

    rerun = build_index(tiny_system, others, index, append=True, device="cpu", chunk_size=8)
    assert (rerun.added, rerun.duplicates, rerun.total) == (len(others) - 8, 8, len(birds) + len(others))
    paths = [row.path for row in RetrievalEngine.load(index, device="cpu").rows]
    assert len(paths) == len(set(paths))


def test_appending_the_same_folder_twice_adds_nothing(tiny_system, tiny_synth, tmp_path, cli):
    ds = read_dataset(tiny_synth)
    index = tmp_path / "index"
    build_index(tiny_system, ds, index, device="cpu")
    code, out, err = cli("index", tiny_system, tiny_synth, "--out", index, "--append")
    assert code == 0, err
    assert "added 0 images" in out and f"{len(ds)} already indexed" in out
    engine = RetrievalEngine.load(index, device="cpu")
    assert len(engine) == len(ds)
    [result] = engine.search([load_image(ds.samples[0].path)], top_k=4)
    assert len(set(result.paths)) == 4


def test_a_copy_of_an_indexed_image_under_another_name_is_a_duplicate(tiny_system, tiny_synth, tmp_path,
                                                                      copy_data):
    manifest = copy_data(tmp_path / "data", rows=6)
    index = tmp_path / "index"
    build_index(tiny_system, read_dataset(manifest), index, device="cpu")
    first = read_dataset(manifest).samples[0].path
    copy = first.with_name("copy-of-" + first.name)
    copy.write_bytes(first.read_bytes())
    (manifest.parent / "more.csv").write_text(
        f"path,label,category\n{copy.relative_to(manifest.parent).as_posix()},,birds\n")
    result = build_index(tiny_system, read_dataset(manifest.parent / "more.csv"), index, append=True, device="cpu")
    assert (result.added, result.duplicates) == (0, 1)
