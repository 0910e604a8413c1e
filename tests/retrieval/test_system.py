"""System config, coarse classifier, classifier-accuracy table and the saved system directory."""

from __future__ import annotations

import numpy as np
import pytest

from fgia.retrieval.system import (
    HASH,
    CoarseClassifier,
    SystemConfig,
    coarse_accuracy_table,
    load_aux_embeddings,
    load_system,
)


def test_config_validates_and_resolves_top_k():
    assert SystemConfig(top_k=50, top_k_fraction=None).resolve_top_k(1000) == 50
    assert SystemConfig(top_k_fraction=0.25).resolve_top_k(1000) == 250
    assert SystemConfig(top_k_fraction=0.001).resolve_top_k(10) == 1
    assert SystemConfig(top_k=100, top_k_fraction=0.25).resolve_top_k(1000) == 100  # the fraction, capped
    assert SystemConfig(top_k=100, top_k_fraction=0.25).resolve_top_k(300) == 75
    for bad in ({"top_k_fraction": 0.0}, {"threshold": 1.5}, {"qe_top": -1}, {"coarse_dim": 0}):
        with pytest.raises(ValueError):
            SystemConfig(**bad)
    train = SystemConfig(backbone="test_resnet", epochs=3, train_options={"weight_decay": 0.5}).train_config()
    assert (train.model, train.model_kwargs["backbone"], train.epochs, train.weight_decay) == \
        ("cnnets", "test_resnet", 3, 0.5)
    assert train.model_kwargs["frozen_stages"] is None and train.cache_trunk  # only the sub-nets train


def _blobs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Three meta-categories separated along one direction buried among `dim` noisy ones.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += 6.0 * y
    return x, y


def test_coarse_classifier_round_trip(tmp_path):
    x, y = _blobs(120, 10, 0)
    clf = CoarseClassifier.fit(x, y)
    clf.save(tmp_path / "clf.npz")
    again = CoarseClassifier.load(tmp_path / "clf.npz")
    np.testing.assert_array_equal(again.predict(x), clf.predict(x))
    assert np.mean(clf.predict(x) == y) > 0.9
    single = CoarseClassifier.fit(x, np.full(len(x), 2))
    assert set(single.predict(x)) == {2}


def test_accuracy_table_follows_pca_dimension():
    x, y = _blobs(200, 64, 1)
    xt, yt = _blobs(100, 64, 2)
    table = coarse_accuracy_table(x, y, xt, yt, dims=(1, 16, 0))
    assert list(table) == ["1", "16", "full"]
    assert table["16"] > 0.9 and table["full"] > 0.9
    assert all(0.0 <= v <= 1.0 for v in table.values())


def test_saved_system_loads_with_everything(built):
    system = load_system(built.system_dir, device="cpu")
    assert system.categories == sorted(built.split.categories)
    assert set(system.models) == {"unified", "offtheshelf", *system.categories}
    assert system.fine_models == ["unified", *system.categories]
    assert system.fine_dim == 16 and system.coarse_pca.n_components == 4
    # one frozen lower trunk shared by every model, the hashing model too
    assert system.group.groups == [[*system.models, HASH]]
    emb, cats = load_aux_embeddings(built.system_dir)
    assert len(emb) == len(cats) == len(built.split.auxiliary)
    assert load_system(built.system_dir).fingerprint == system.fingerprint
    with pytest.raises(FileNotFoundError, match="not an OSFGIR system"):
        load_system(built.index_dir)
