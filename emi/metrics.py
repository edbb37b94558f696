"""Scores: Pearson per dimension (torchmetrics), the headline score set, and the oracle ceiling of the embedded
dataset (what a model reading the clips can be expected to reach)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchmetrics.functional import pearson_corrcoef

from emi.config import EMOTIONS, SIGNIFICANT_SD
from emi.data.dataset import read_latents


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


RENDERED_PROSODY = ("pitch", "rate", "amplitude", "word_gap")


def rendered_controls(raw_dir: Path) -> tuple[pd.DataFrame, str] | None:
    """What the generator rendered per clip (indexed by id, numeric, clips with every value): the face controls
    (``face_*``) and the prosody (pitch, rate, amplitude, word_gap), else the latent intensities; with a line
    naming them. Embedded dataset only: None without ``_generator/latents.csv``."""
    table = read_latents(raw_dir)
    if table is None:
        return None
    table = table.set_index("id")
    cols = [c for c in table.columns if c.startswith("face_")] + [c for c in RENDERED_PROSODY if c in table]
    source = "rendered face controls + prosody"
    if not cols:
        cols, source = [f"latent_{e}" for e in EMOTIONS], "latent intensities (no rendered controls found)"
    return table[cols].apply(pd.to_numeric, errors="coerce").dropna(), f"{source}: {', '.join(cols)}"


def ceiling(raw_dir: Path, parts: dict, splits: list[str], alpha: float) -> tuple[dict, str] | None:
    """Oracle ridge regression (standardized inputs) from what the generator rendered to the labels: fit on
    train, scored on the clips the model was scored on. Embedded dataset only: None without
    ``_generator/latents.csv``.

    Its inputs are the rendered face controls and prosody (``rendered_controls``): they carry each person's
    expressiveness, which the labels do not, so this bounds what a model reading the clips can reach. The
    ``latent_*`` columns are the annotators' side of the chain (labels = latent + noise) and would only measure
    the label noise; they are the fallback when no rendered columns exist."""
    found = rendered_controls(raw_dir)
    if found is None:
        return None
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    table, source = found

    def rows(part) -> tuple[np.ndarray, np.ndarray]:
        keep = [i for i, c in enumerate(part.ids) if c in table.index]
        return table.loc[[part.ids[i] for i in keep]].to_numpy(float), part.labels[keep]

    oracle = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(*rows(parts["train"]))
    out = {}
    for split in splits:
        x, y = rows(parts[split])
        if len(y) >= 2:
            out[split] = scores(oracle.predict(x), y)
    return out, source


# ----------------------------------------------------------------------------- evidence over seeds
def mean_sd(table: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """One row per ``keys`` group (first-seen order): each of ``values`` as its mean over the group's rows (the
    seeds) and ``<value>_sd``, their sample standard deviation (NaN for one seed)."""
    grouped = table.groupby(keys, sort=False)[values]
    mean, sd = grouped.mean(), grouped.std(ddof=1).add_suffix("_sd")
    return pd.concat([mean, sd], axis=1).reset_index()


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, bool]:
    """Mean and sample sd over seeds of ``a - b`` (paired: entry i of each comes from seed i) and whether the mean
    exceeds ``SIGNIFICANT_SD`` sds (never with one seed: no sd)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return mean, sd, bool(len(d) > 1 and abs(mean) > SIGNIFICANT_SD * sd)


def loss_avoided(delta_quality: float, delta_average: float, sd_average: float = float("nan")) -> float | None:
    """The fraction of average fusion's loss (its drop in mean Pearson from clean) that quality fusion avoids:
    1 - delta_quality / delta_average. 1 = quality loses nothing, 0 = it loses as much, < 0 = more, > 1 = it
    gains. None when there is no loss to avoid: average fusion does not lose (delta_average >= 0), or its loss is
    within ``SIGNIFICANT_SD`` of its sd over seeds ``sd_average`` (a ratio to noise says nothing)."""
    if not delta_average < 0 or (np.isfinite(sd_average) and -delta_average <= SIGNIFICANT_SD * sd_average):
        return None
    return float(1 - delta_quality / delta_average)
