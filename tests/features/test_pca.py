"""FeaturePCA: projection, whitening, persistence, fingerprint, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from fgia.features.pca import FeaturePCA


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(60, 12)) * np.linspace(5, 0.5, 12)).astype(np.float32)


def test_matches_sklearn_without_normalisation(features):
    ours = FeaturePCA(4, l2_normalize=False).fit(features).transform(features)
    reference = PCA(4, svd_solver="full").fit(features).transform(features)
    np.testing.assert_allclose(np.abs(ours), np.abs(reference), rtol=1e-4, atol=1e-4)


def test_whitening_gives_unit_variance_and_l2_gives_unit_rows(features):
    white = FeaturePCA(5, whiten=True, l2_normalize=False).fit_transform(features)
    np.testing.assert_allclose(white.var(0, ddof=1), np.ones(5), rtol=1e-3)
    unit = FeaturePCA(5).fit_transform(features)
    assert unit.dtype == np.float32 and unit.shape == (60, 5)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_save_load_round_trip_and_fingerprint(features, tmp_path):
    pca = FeaturePCA(3, whiten=True).fit(features)
    pca.save(tmp_path / "pca.npz")
    loaded = FeaturePCA.load(tmp_path / "pca.npz")
    np.testing.assert_allclose(loaded.transform(features), pca.transform(features), rtol=1e-6)
    assert loaded.fingerprint() == pca.fingerprint()
    assert FeaturePCA(3, whiten=False).fit(features).fingerprint() != pca.fingerprint()
    assert FeaturePCA(3, whiten=True).fit(features[:30]).fingerprint() != pca.fingerprint()


def test_errors(features, tmp_path):
    with pytest.raises(ValueError, match=r"exceeds min\(n_samples, dim\)"):
        FeaturePCA(13).fit(features)
    with pytest.raises(ValueError, match=r"exceeds min\(n_samples, dim\)"):
        FeaturePCA(5).fit(features[:4])
    pca = FeaturePCA(3).fit(features)
    with pytest.raises(ValueError, match="fitted on 12-d"):
        pca.transform(features[:, :8])
    with pytest.raises(RuntimeError, match="not fitted"):
        FeaturePCA(3).transform(features)
    bad = features.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pca.transform(bad)
    with pytest.raises(FileNotFoundError):
        FeaturePCA.load(tmp_path / "absent.npz")
