"""Scores: Pearson per dimension (scipy) and the headline score set."""

import numpy as np
import pytest

from emi.config import EMOTIONS
from emi.metrics import pearson_per_dim, scores


def test_pearson_per_dim_per_column_and_constant_column_is_zero():
    rng = np.random.default_rng(0)
    y = rng.random((50, 3))
    pred = np.stack([2 * y[:, 0] + 1, -y[:, 1], np.full(50, 0.3)], axis=1)
    r = pearson_per_dim(pred, y)
    assert r.shape == (3,)
    np.testing.assert_allclose(r[:2], [1.0, -1.0], atol=1e-6)
    assert r[2] == 0.0, "a constant prediction column must score 0, not NaN"
    assert pearson_per_dim(pred[:1], y[:1]).tolist() == [0.0, 0.0, 0.0], "one clip has no correlation"


def test_pearson_per_dim_accepts_read_only_arrays():
    y = np.random.default_rng(1).random((10, 2))
    y.setflags(write=False)  # what pandas 3 hands out
    np.testing.assert_allclose(pearson_per_dim(y, y), [1.0, 1.0], atol=1e-6)


def test_scores_has_mean_per_emotion_mse_and_n():
    rng = np.random.default_rng(2)
    labels = rng.random((20, len(EMOTIONS)))
    pred = labels + 0.1 * rng.standard_normal(labels.shape)
    s = scores(pred, labels)
    assert set(s) == {"pearson_mean", "mse", "n", *(f"pearson_{e}" for e in EMOTIONS)}
    assert s["n"] == 20
    assert s["mse"] == pytest.approx(((pred - labels) ** 2).mean())
    assert s["pearson_mean"] == pytest.approx(np.mean([s[f"pearson_{e}"] for e in EMOTIONS]))
    assert 0.8 < s["pearson_mean"] < 1.0
