"""Binary codes: sign binarisation, LSH (median thresholds) and ITQ on small random data."""

from __future__ import annotations

import numpy as np
import pytest

from fgia.features.binary import BinaryEncoder, binarize
from fgia.metrics import evaluate_hamming


def _clusters(classes=8, per_class=25, dim=32, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def _map(codes, labels):
    return evaluate_hamming(codes, labels, codes, labels, exclude_ids=np.arange(len(labels)))["mAP"]


def test_binarize_is_the_sign_with_zero_as_minus_one():
    np.testing.assert_array_equal(binarize(np.array([[0.3, -2.0, 0.0]])), [[1.0, -1.0, -1.0]])
    assert binarize(np.zeros((2, 3))).dtype == np.float32


@pytest.mark.parametrize("method", ["lsh", "itq"])
def test_codes_are_balanced_deterministic_and_pm1(method):
    x, _ = _clusters()
    x = x + 5.0  # off-centre features: thresholds must not sit at 0
    codes = BinaryEncoder(method, 12, seed=3).fit(x).encode(x)
    assert codes.shape == (200, 12) and set(np.unique(codes)) == {-1.0, 1.0}
    ones = (codes > 0).mean(0)
    if method == "lsh":  # median thresholds split the fitting set exactly in half (200 distinct values per bit)
        np.testing.assert_array_equal(ones, 0.5)
    else:  # ITQ centres, then rotates: roughly balanced
        assert np.all(np.abs(ones - 0.5) < 0.3)
    np.testing.assert_array_equal(codes, BinaryEncoder(method, 12, seed=3).fit(x).encode(x))


def test_lsh_seed_changes_the_projection():
    x, _ = _clusters()
    a = BinaryEncoder("lsh", 16, seed=0).fit(x).encode(x)
    b = BinaryEncoder("lsh", 16, seed=1).fit(x).encode(x)
    assert (a != b).any()


def test_more_lsh_bits_preserve_neighbourhoods_better():
    x, y = _clusters()
    few = _map(BinaryEncoder("lsh", 8).fit(x).encode(x), y)
    many = _map(BinaryEncoder("lsh", 128).fit(x).encode(x), y)
    assert many > few + 0.1


def test_itq_beats_lsh_at_short_codes():
    # ITQ keeps the top principal directions (the cluster structure); LSH's random ones mostly see the noise.
    x, y = _clusters(dim=64, spread=1.0)
    itq = _map(BinaryEncoder("itq", 8).fit(x).encode(x), y)
    lsh = _map(BinaryEncoder("lsh", 8).fit(x).encode(x), y)
    assert itq > lsh + 0.05


def test_bad_input():
    with pytest.raises(ValueError, match="unknown binary encoder"):
        BinaryEncoder("pq", 8)
    with pytest.raises(RuntimeError, match="fit the encoder"):
        BinaryEncoder("lsh", 8).encode(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="ITQ to 32 bits needs features of dim >= 32"):
        BinaryEncoder("itq", 32).fit(np.zeros((50, 16)))
    encoder = BinaryEncoder("lsh", 8).fit(np.random.default_rng(0).normal(size=(20, 16)))
    with pytest.raises(ValueError, match="fitted on 16-d"):
        encoder.encode(np.zeros((2, 15)))
