"""Scores: Pearson per dimension (torchmetrics) and the score set every model is judged by (training validates
with it, evaluation reports it)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional import pearson_corrcoef

from emi.config import EMOTIONS


def pearson_per_dim(pred: np.ndarray | Tensor, target: np.ndarray | Tensor) -> np.ndarray:
    """Pearson's r per output column (torchmetrics); a constant column gives 0 rather than NaN."""
    # copies: pandas 3 hands out read-only arrays, which torch will not wrap
    p, t = (torch.tensor(np.array(x, dtype=np.float64)) for x in (pred, target))
    if p.shape[0] < 2:
        return np.zeros(p.shape[1])
    r = pearson_corrcoef(p, t).numpy()
    return np.nan_to_num(np.atleast_1d(r), nan=0.0)


def scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean and per-dimension Pearson, MSE and the number of clips scored."""
    r = pearson_per_dim(pred, labels)
    return {"pearson_mean": float(r.mean()), **{f"pearson_{e}": float(v) for e, v in zip(EMOTIONS, r)},
            "mse": float(((pred - labels) ** 2).mean()), "n": len(labels)}
