"""Evidence over training seeds: means and sds per variant, differences paired by seed, and the share of a loss
one fusion avoids; a difference counts when it exceeds ``SIGNIFICANT_SD`` sds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi.config import SIGNIFICANT_SD


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


REFERENCE_FUSION = "average"
"""The fusion the model's own fusion is compared with under damage (the plain mean of the modalities)."""


def model_fusion(table: pd.DataFrame) -> str:
    """The model's fusion in a robustness table: the one that is not the reference (the reference itself when the
    model uses it)."""
    return next((f for f in dict.fromkeys(table["fusion"]) if f != REFERENCE_FUSION), REFERENCE_FUSION)
