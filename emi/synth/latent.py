"""Latent intensities, labels and the expression/prosody controls they drive.

The chain that makes labels recoverable (and bounds how well):
  latent e ∈ [0,1]^6 (Gaussian copula with configured correlations): how strongly the person feels each emotion
  ├─ labels = mean of a few raters' scores, each rater clip(e + their fixed bias + noise)
  ├─ face shown  = e · face_weight · g_face    g = this person's gain on that channel × this clip's own draw
  └─ voice shown = e · voice_weight · g_voice  per emotion, so face and voice are two noisy views of e that lean
                                               on different emotions (Joy on the face, Excitement in the voice)
       ├─ face controls    = FACE_MIX @ face shown     (drawn at an episode's apex, written to latents.csv)
       └─ prosody controls = PROSODY_MIX @ voice shown (espeak-ng pitch/rate/volume of an episode's voice)
The sentence depends on the dominant emotion only (emi.synth.speech): words say which emotion, rarely how strong.
An oracle regressor on the apex controls therefore reaches a high but imperfect Pearson: the ceiling.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from emi.config import EMOTIONS, RaterParams, SyntheticParams

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


def rate(rng: np.random.Generator, latents: np.ndarray, raters: RaterParams) -> tuple[np.ndarray, np.ndarray]:
    """(labels, rater ids): each clip's label is the mean of ``raters.per_clip`` raters drawn from a pool, each
    scoring clip(e + their fixed per-emotion bias + noise) on the [0, 1] scale."""
    n, k = latents.shape
    bias = rng.normal(0.0, raters.bias, (raters.pool, k))
    who = np.stack([rng.choice(raters.pool, raters.per_clip, replace=False) for _ in range(n)])
    noise = rng.normal(0.0, raters.noise, (n, raters.per_clip, k))
    scores = np.clip(latents[:, None, :] + bias[who] + noise, 0.0, 1.0)
    return scores.mean(1), who


def shown(latent: np.ndarray, weights: dict[str, float], gain: np.ndarray | float) -> np.ndarray:
    """What one channel shows of the latent at full strength: per-emotion weight × the clip's gain, capped."""
    return np.clip(np.asarray(latent) * np.array([weights[e] for e in EMOTIONS]) * gain, 0.0, 1.5)


def face_controls(shown: np.ndarray) -> np.ndarray:
    return shown @ FACE_MIX.T


def prosody_controls(shown: np.ndarray) -> np.ndarray:
    return PROSODY_BASE + shown @ PROSODY_MIX.T
