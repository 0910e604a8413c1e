"""Binary codes from real-valued features: sign binarisation, and the unsupervised baselines LSH and ITQ.

Codes are float arrays of +-1 (n, bits): the Hamming distance of two codes is (bits - u.v) / 2, so metrics can
rank them exactly, and `fgia.index` binary indexes take them as they are (a positive value is a 1 bit).

* `binarize`: the sign of relaxed codes (a hashing model's embedding), 0 counting as -1 like the binary index.
* `BinaryEncoder("lsh", bits)`: a random orthogonal projection to `bits` dimensions (FAISS `RandomRotationMatrix`;
  more bits than dimensions allowed), each thresholded at its median on the fitting features (every bit splits
  them in half).
* `BinaryEncoder("itq", bits)`: Iterative Quantization (Gong & Lazebnik, CVPR 2011): centring, PCA to `bits`
  dimensions and the rotation that minimises the quantisation error (FAISS `ITQTransform`), then the sign.
"""

from __future__ import annotations

import faiss
import numpy as np

ENCODERS = ("lsh", "itq")


def binarize(x: np.ndarray) -> np.ndarray:
    """+-1 float32 codes: 1 where `x` > 0, else -1."""
    return np.where(np.asarray(x) > 0, 1.0, -1.0).astype(np.float32)


class BinaryEncoder:
    """An unsupervised `bits`-bit encoder of real-valued features (see the module docstring); `fit`, then `encode`."""

    def __init__(self, method: str, bits: int, seed: int = 0) -> None:
        if method not in ENCODERS:
            raise ValueError(f"unknown binary encoder {method!r}; choose from {ENCODERS}")
        if bits < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        self.method, self.bits, self.seed = method, int(bits), seed
        self._transform: faiss.VectorTransform | None = None
        self._thresholds: np.ndarray | None = None

    def fit(self, features: np.ndarray) -> BinaryEncoder:
        """Learn the projection (and LSH's thresholds) from `features` (n, d); ITQ needs d >= bits and n > bits."""
        x = _float32(features)
        n, dim = x.shape
        if self.method == "itq" and (dim < self.bits or n <= self.bits):
            raise ValueError(f"ITQ to {self.bits} bits needs features of dim >= {self.bits} and more than that many "
                             f"of them; got {x.shape}")
        if self.method == "lsh":
            rotation = faiss.RandomRotationMatrix(dim, self.bits)
            rotation.init(self.seed)
            self._transform = rotation
            self._thresholds = np.median(rotation.apply(x), axis=0)
        else:
            itq = faiss.ITQTransform(dim, self.bits, True)
            itq.itq.seed = self.seed
            itq.train(x)
            self._transform = itq
            self._thresholds = np.zeros(self.bits, np.float32)
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """+-1 codes (n, bits) of `features`."""
        if self._transform is None:
            raise RuntimeError("fit the encoder before encoding")
        x = _float32(features)
        if x.shape[1] != self._transform.d_in:
            raise ValueError(f"the encoder was fitted on {self._transform.d_in}-d features, got {x.shape[1]}-d")
        return binarize(self._transform.apply(x) - self._thresholds)


def _float32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {x.shape}")
    return x
