"""Latent intensities, labels and the expression/prosody controls they drive.

The chain that makes labels recoverable (and bounds how well):
  latent e ∈ [0,1]^6 (Gaussian copula with configured correlations)
  ├─ labels  = clip(e + annotator noise)
  └─ shown   = e · k, k = this person's expressiveness (individual variation)
       ├─ face controls   = FACE_MIX @ shown   (what the renderer draws, written to latents.csv)
       ├─ prosody controls = PROSODY_MIX @ shown (espeak-ng pitch/rate/volume)
       └─ sentence chosen by the dominant emotion and its strength
An oracle regressor on the face controls therefore reaches a high but imperfect Pearson: the ceiling.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from emi.config import EMOTIONS, SyntheticParams

# Rows: face controls; columns: EMOTIONS order (Adm, Amu, Det, EmpPain, Exc, Joy).
# Loosely after FACS prototypes: joy = lip-corner pull + cheek raise, admiration = brow raise + wide eyes,
# determination = brow lowerer + lip press, empathic pain = inner-brow raise + lip-corner depress.
FACE_CONTROLS: tuple[str, ...] = (
    "smile",
    "mouth_open",
    "brow_raise",
    "brow_furrow",
    "brow_inner_raise",
    "eye_open",
    "lip_press",
    "cheek_raise",
    "head_motion",
    "head_tilt",
)
FACE_MIX = np.array(
    [
        # Adm   Amu   Det   Pain  Exc   Joy
        [0.25, 0.55, -0.15, -0.60, 0.20, 0.90],  # smile (negative = frown)
        [0.10, 0.65, -0.20, 0.05, 0.60, 0.15],  # mouth_open
        [0.80, 0.20, -0.20, 0.10, 0.45, 0.05],  # brow_raise
        [-0.10, -0.10, 0.85, 0.25, 0.00, -0.10],  # brow_furrow
        [0.10, -0.10, -0.05, 0.90, 0.00, -0.10],  # brow_inner_raise (oblique "sad" brows)
        [0.45, -0.15, -0.25, -0.30, 0.45, -0.35],  # eye_open (offset from neutral; joy squints)
        [0.00, -0.20, 0.80, 0.20, -0.20, 0.00],  # lip_press
        [0.10, 0.45, 0.00, -0.10, 0.15, 0.65],  # cheek_raise
        [0.05, 0.50, 0.15, -0.10, 0.85, 0.20],  # head_motion amplitude
        [0.15, 0.05, -0.10, 0.60, 0.00, 0.05],  # head_tilt
    ]
)

PROSODY_CONTROLS: tuple[str, ...] = ("pitch", "rate", "amplitude", "word_gap")
# espeak-ng units: pitch 0-99 (50 neutral), rate words/min, amplitude 0-200, word gap in 10 ms units.
PROSODY_BASE = np.array([45.0, 155.0, 100.0, 0.0])
PROSODY_MIX = np.array(
    [
        # Adm   Amu   Det   Pain   Exc   Joy
        [8.0, 12.0, -10.0, -14.0, 22.0, 12.0],  # pitch
        [-10.0, 25.0, 10.0, -45.0, 45.0, 10.0],  # rate
        [5.0, 15.0, 35.0, -35.0, 30.0, 10.0],  # amplitude
        [2.0, 0.0, 0.0, 8.0, -2.0, 0.0],  # word gap
    ]
)


def correlation_matrix(params: SyntheticParams) -> np.ndarray:
    """The configured pairwise correlations, projected onto the nearest valid correlation matrix."""
    index = {name: i for i, name in enumerate(EMOTIONS)}
    corr = np.eye(len(EMOTIONS))
    for pair, value in params.latent_correlation.items():
        a, b = (index[name] for name in pair.split("~"))
        corr[a, b] = corr[b, a] = value
    vals, vecs = np.linalg.eigh(corr)
    if vals.min() < 1e-6:  # not positive definite: clip the spectrum, renormalise the diagonal
        corr = vecs @ np.diag(np.clip(vals, 1e-6, None)) @ vecs.T
        d = np.sqrt(np.diag(corr))
        corr = corr / np.outer(d, d)
    return corr


def sample_latents(rng: np.random.Generator, n: int, params: SyntheticParams) -> np.ndarray:
    """n × 6 intensities in [0,1] with the configured dependence; skewed low like real ratings."""
    chol = np.linalg.cholesky(correlation_matrix(params))
    z = rng.standard_normal((n, len(EMOTIONS))) @ chol.T
    return norm.cdf(z) ** params.label_skew


def labels_from_latents(rng: np.random.Generator, latents: np.ndarray, noise: float) -> np.ndarray:
    return np.clip(latents + rng.normal(0.0, noise, latents.shape), 0.0, 1.0)


def face_controls(shown: np.ndarray) -> np.ndarray:
    return shown @ FACE_MIX.T


def prosody_controls(shown: np.ndarray) -> np.ndarray:
    return PROSODY_BASE + shown @ PROSODY_MIX.T
