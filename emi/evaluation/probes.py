"""Linear probes on clip-mean features: what a ridge regression recovers from the features Stage II reads.

- ``linear_probe``: all modalities -> the six labels (the ablation's baseline row: the network's value over it);
- ``control_probes``: each modality alone -> each control the generator rendered (smile, brows, pitch, rate, ...),
  R^2 on valid: whether a gap to the ceiling is lost in the encoders or in the model.

Ridge on standardized inputs; the penalty is chosen per target from ``alphas`` by leave-one-out on train.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi.config import MODALITY_KEYS
from emi.metrics import scores
from emi.data.sequences import SequenceData

KEYS = tuple(MODALITY_KEYS.values())  # V, A, T: the columns of SequenceData.mask
LINEAR_PROBE = "linear probe"
"""The ablation's baseline row (its fusion column): ridge on the clip means of every modality."""
PROBE_COLUMNS = ("control", *KEYS, "".join(KEYS))
"""The control probe table's columns: the control, R^2 from each modality alone, from all three."""


def clip_means(data: SequenceData, modality: str) -> np.ndarray:
    """(N, D) per-clip mean over time of one modality's features (``V``, ``A`` or ``T``)."""
    if modality == "T":
        return np.asarray(data.text, np.float64)
    seqs = data.visual if modality == "V" else data.audio
    return np.stack([np.asarray(seqs[i], np.float64).mean(0) for i in range(len(data))]) if len(data) else (
        np.zeros((0, 0)))


def _design(train: SequenceData, other: SequenceData, modalities: str) -> tuple[np.ndarray, np.ndarray]:
    """Clip means of ``modalities`` side by side; a masked modality's block holds the training mean of the clips
    that have it, and with several modalities the mask itself is a column per modality."""
    blocks_train, blocks_other = [], []
    for m in modalities:
        j = KEYS.index(m)
        x_tr, x_ot = clip_means(train, m), clip_means(other, m)
        fill = x_tr[train.mask[:, j]].mean(0) if train.mask[:, j].any() else np.zeros(x_tr.shape[1])
        blocks_train.append(np.where(train.mask[:, [j]], x_tr, fill))
        blocks_other.append(np.where(other.mask[:, [j]], x_ot, fill))
    if len(modalities) > 1:
        cols = [KEYS.index(m) for m in modalities]
        blocks_train.append(train.mask[:, cols].astype(float))
        blocks_other.append(other.mask[:, cols].astype(float))
    return np.hstack(blocks_train), np.hstack(blocks_other)


def _ridge(alphas: tuple[float, ...]):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas), alpha_per_target=True))


def linear_probe(train: SequenceData, valid: SequenceData, alphas: tuple[float, ...],
                 modalities: str = "VAT") -> dict[str, float]:
    """Ridge from the clip means of ``modalities`` to the six labels, fit on train, scored on valid with
    ``emi.metrics.scores`` (the numbers every ablation row reports)."""
    x_tr, x_va = _design(train, valid, modalities)
    model = _ridge(alphas).fit(x_tr, train.labels)
    return scores(model.predict(x_va), valid.labels)


def control_probes(train: SequenceData, valid: SequenceData, controls: pd.DataFrame,
                   alphas: tuple[float, ...]) -> pd.DataFrame:
    """One row per control (a column of ``controls``, indexed by clip id), R^2 on valid of a ridge from each
    modality's clip means alone (``V``, ``A``, ``T``: clips that have the modality) and from all three (``VAT``),
    fit on train. NaN where fewer than 2 clips are left to fit or score."""
    from sklearn.metrics import r2_score

    def rows(data: SequenceData, need: str) -> list[int]:
        return [i for i, c in enumerate(data.ids) if c in controls.index and
                all(data.mask[i, KEYS.index(m)] for m in need)]

    out = pd.DataFrame({"control": list(controls.columns)})
    for modalities in PROBE_COLUMNS[1:]:
        need = modalities if len(modalities) == 1 else ""  # all three: masked blocks are filled, not dropped
        tr, va = train.subset(rows(train, need)), valid.subset(rows(valid, need))
        if len(tr) < 2 or len(va) < 2:
            out[modalities] = np.nan
            continue
        x_tr, x_va = _design(tr, va, modalities)
        y_tr, y_va = (controls.loc[d.ids].to_numpy(float) for d in (tr, va))
        pred = _ridge(alphas).fit(x_tr, y_tr).predict(x_va)
        out[modalities] = r2_score(y_va, pred, multioutput="raw_values")
    return out
