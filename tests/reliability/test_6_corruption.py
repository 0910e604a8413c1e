"""Failure 6: corrupt index files went undetected or gave cryptic errors: a metadata CSV cut short let the
server start and fail every search; truncated arrays gave `mmap length is greater than file size` with no file
named; values overwritten in place silently changed rankings; a truncated JSON gave a nameless JSONDecodeError.

Counts and sizes are checked on every load, checksums by `fgia index verify` (and on load with verify=True); each
error names the file and how to repair.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from reliability_helpers import one_error_line

from fgia.data import read_dataset
from fgia.index import CorruptIndexError
from fgia.retrieval.engine import RetrievalEngine, build_index


@pytest.fixture(scope="module")
def pristine(tiny_system, tiny_synth, tmp_path_factory):
    index = tmp_path_factory.mktemp("pristine") / "index"
    build_index(tiny_system, read_dataset(tiny_synth), index, device="cpu")
    return index


@pytest.fixture
def index(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "index")
    return tmp_path / "index"


def _manifest(index):
    return json.loads((index / "manifest.json").read_text())


def _file(index, prefix):
    return index / next(name for name in _manifest(index)["files"] if name.startswith(prefix))


def test_metadata_cut_short_is_refused_on_load(index):
    metadata = _file(index, "metadata")
    lines = metadata.read_text().splitlines(keepends=True)
    metadata.write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(CorruptIndexError) as err:
        RetrievalEngine.load(index, device="cpu")
    assert metadata.name in str(err.value) and "fgia index" in str(err.value)


def test_truncated_array_names_the_file(index):
    array = _file(index, "arrays/fine")
    array.write_bytes(array.read_bytes()[:-100])
    with pytest.raises(CorruptIndexError, match=array.name):
        RetrievalEngine.load(index, device="cpu")


def test_values_overwritten_in_place_are_caught_by_verify(index, cli):
    array = _file(index, "arrays/coarse")
    raw = bytearray(array.read_bytes())
    raw[-16:] = np.full(4, 7.0, np.float32).tobytes()  # same size, different numbers
    array.write_bytes(bytes(raw))
    assert len(RetrievalEngine.load(index, device="cpu")) > 0  # sizes still match: the quick checks pass
    with pytest.raises(CorruptIndexError, match="checksum"):
        RetrievalEngine.load(index, device="cpu", verify=True)
    code, _, err = cli("index", "verify", index)
    assert code == 1
    line = one_error_line(err)
    assert array.name in line and "checksum" in line


def test_verify_passes_a_good_index(pristine, cli):
    code, out, err = cli("index", "verify", pristine)
    assert code == 0, err
    assert "ok" in out.lower()


def test_truncated_manifest_names_the_file(index, cli):
    manifest = index / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    with pytest.raises(CorruptIndexError, match="manifest.json"):
        RetrievalEngine.load(index, device="cpu")
    code, _, err = cli("search", index, __file__)  # any query path: the index is refused first
    assert code == 1 and "manifest.json" in one_error_line(err)


def test_missing_file_names_it(index):
    victim = _file(index, "indexes/")
    victim.unlink()
    with pytest.raises(CorruptIndexError, match=victim.name):
        RetrievalEngine.load(index, device="cpu")

