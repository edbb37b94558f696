"""Scores: Pearson per dimension (scipy) and the score set every model is judged by (training validates with it,
evaluation reports it).

scipy rather than torchmetrics: the same r to 1e-16, and importing torchmetrics (which imports torchvision and
torch._dynamo) took 4.7 s of every stage that scores, about half of a small stage's run.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr

from emi.config import EMOTIONS

MIN_CLIPS = 2
"""Pearson's r over clips needs two clips or more (evaluate refuses a validation split with fewer)."""


def pearson_per_dim(pred, target) -> np.ndarray:
    """Pearson's r per output column of two (N, D) arrays (or tensors); a constant column gives 0 rather than NaN."""
    p, t = (np.array(x, dtype=np.float64) for x in (pred, target))
    if p.shape[0] < MIN_CLIPS:
        return np.zeros(p.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # the constant column is the 0 below
        r = pearsonr(p, t, axis=0).statistic
    return np.nan_to_num(np.atleast_1d(r), nan=0.0)


def scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean and per-dimension Pearson, MSE and the number of clips scored."""
    r = pearson_per_dim(pred, labels)
    return {"pearson_mean": float(r.mean()), **{f"pearson_{e}": float(v) for e, v in zip(EMOTIONS, r)},
            "mse": float(((pred - labels) ** 2).mean()), "n": len(labels)}
