"""`--engine ray`: Ray Data extraction gives the single-process features and the same index (one local Ray
for the whole module)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray")

from fgia.data.samples import Sample  # noqa: E402
from fgia.features.distributed import extract_models_ray, ray_session  # noqa: E402
from fgia.features.extract import extract_models  # noqa: E402
from fgia.retrieval.engine import RetrievalEngine, build_index  # noqa: E402
from fgia.retrieval.system import load_system  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    with ray_session():
        yield


@pytest.mark.parametrize("decode_in_actors", [True, False], ids=["actors-decode", "tasks-decode"])
def test_ray_features_equal_the_single_process_ones(built, tmp_path, decode_in_actors):
    system = load_system(built.system_dir, "cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    samples = [*built.split.database.samples[:9], Sample(path=broken, label=-1), *built.split.database.samples[9:14]]
    options = {"batch_size": 4, "keep_maps": True, "device": "cpu"}
    expected = extract_models(system.group, samples, system.spec, workers=0, **options)
    got = extract_models_ray(system.group, samples, system.spec, decode_in_actors=decode_in_actors, **options)
    assert set(got) == set(expected)
    for name, features in expected.items():
        assert got[name].skipped == features.skipped == 1
        np.testing.assert_array_equal(got[name].index, features.index)
        np.testing.assert_array_equal(got[name].predicted, features.predicted)
        for part in ("image", "region", "boxes", "maps"):
            want, have = getattr(features, part), getattr(got[name], part)
            assert (want is None) == (have is None), f"{name} {part}"
            if want is not None:
                difference = np.abs(have - want).max()
                assert difference <= 1e-5, f"{name} {part}: max abs difference {difference}"


def test_ray_engine_builds_the_same_index(built, tmp_path):
    reference = RetrievalEngine.load(built.index_dir, device="cpu")
    result = build_index(built.system_dir, built.split.database, tmp_path / "index", device="cpu", engine="ray",
                         codes=reference.code_bits)
    ray_engine = RetrievalEngine.load(tmp_path / "index", device="cpu")
    assert result.total == len(reference)
    assert ray_engine.rows == reference.rows
    for name in reference.store.dims:
        assert np.abs(ray_engine.store.array(name) - reference.store.array(name)).max() <= 1e-5, name
    queries = reference.query_features(built.split.queries.samples)
    np.testing.assert_array_equal(ray_engine.rank(queries).ids, reference.rank(queries).ids)
