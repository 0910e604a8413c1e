"""PCA (optionally whitened) fitted on the auxiliary set and saved with the model, so queries and database
images are reduced the same way. Rows are L2-normalised before and after the projection by default."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from fgia.runtime import atomic_path

_EPS = 1e-12


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); the dtype is kept."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


class FeaturePCA:
    """`n_components`-d PCA of (N, D) features; `whiten` scales each component to unit variance."""

    def __init__(self, n_components: int, whiten: bool = False, l2_normalize: bool = True) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = n_components
        self.whiten = whiten
        self.l2_normalize = l2_normalize
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    @property
    def input_dim(self) -> int | None:
        return None if self.components is None else int(self.components.shape[1])

    def fit(self, features: np.ndarray) -> FeaturePCA:
        """Fit on (N, D) features; needs n_components <= min(N, D)."""
        x = self._check(features, fitting=True)
        limit = min(x.shape)
        if self.n_components > limit:
            raise ValueError(
                f"n_components={self.n_components} exceeds min(n_samples, dim) = min{x.shape} = {limit}; "
                "use fewer components or more auxiliary images"
            )
        pca = PCA(n_components=self.n_components, svd_solver="full").fit(x)
        self.mean = pca.mean_.astype(np.float32)
        self.components = pca.components_.astype(np.float32)
        variance = np.maximum(pca.explained_variance_, _EPS) if self.whiten else np.ones(self.n_components)
        self.scale = (1.0 / np.sqrt(variance)).astype(np.float32)
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, n_components) float32, with the fitted projection."""
        if self.components is None:
            raise RuntimeError("FeaturePCA is not fitted: call fit() or load() first")
        x = self._check(features, fitting=False)
        out = ((x - self.mean) @ self.components.T) * self.scale
        return (l2_normalize(out) if self.l2_normalize else out).astype(np.float32)

    def fit_transform(self, features: np.ndarray) -> np.ndarray:
        return self.fit(features).transform(features)

    def _check(self, features: np.ndarray, fitting: bool) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features must be a 2-D (N, D) array, got shape {x.shape}")
        if not fitting and x.shape[1] != self.input_dim:
            raise ValueError(f"features have dimension {x.shape[1]} but this PCA was fitted on {self.input_dim}-d ones")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values")
        return l2_normalize(x) if self.l2_normalize else x

    def fingerprint(self) -> str:
        """A short hash of the settings and fitted parameters (checks a query uses the database's PCA)."""
        digest = hashlib.sha256(f"{self.n_components}|{self.whiten}|{self.l2_normalize}".encode())
        for array in (self.mean, self.components, self.scale):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted PCA to an .npz file atomically."""
        if self.components is None:
            raise RuntimeError("cannot save an unfitted FeaturePCA")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                mean=self.mean,
                components=self.components,
                scale=self.scale,
                flags=np.array([self.whiten, self.l2_normalize]),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeaturePCA:
        """Read a FeaturePCA written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"PCA file not found: {path}")
        with np.load(path) as data:
            whiten, normalize = (bool(v) for v in data["flags"])
            pca = cls(int(data["components"].shape[0]), whiten=whiten, l2_normalize=normalize)
            pca.mean, pca.components, pca.scale = data["mean"], data["components"], data["scale"]
        return pca
