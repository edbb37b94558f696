"""The oracle ceiling of the embedded dataset: what a model reading the clips can be expected to reach, from what
the generator rendered (``_generator/latents.csv``); none on licensed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS
from emi.data.dataset import read_latents
from emi.metrics import scores


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
