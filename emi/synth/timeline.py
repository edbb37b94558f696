"""When things happen in a clip: its length, its expressive episodes and where the voice falls among them.

A clip is mostly neutral. One or two brief episodes (onset, apex, offset) at random positions carry the
expression on the face and, when the episode has one, in the voice (a burst, or the sentence said with feeling);
a sentence said neutrally falls between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DURATION_SHAPE = 2.0  # gamma shape of (length - shortest): right-skewed like real clip lengths
EDGE_S = 0.2  # neutral time kept at each end of a clip
VOICE_PAD_S = 0.2  # an episode starts at least this long before its voice and ends this long after it


@lru_cache(maxsize=8)
def duration_scale(lo: float, hi: float, mean: float) -> float:
    """The gamma scale for which lo + Gamma(DURATION_SHAPE, scale), truncated at hi, has the given mean."""
    from scipy.optimize import brentq
    from scipy.stats import gamma

    span = hi - lo
    if span <= 1e-9 or mean - lo <= 1e-6:
        return 1e-6

    def excess(scale: float) -> float:
        return lo + gamma.expect(lambda x: x, (DURATION_SHAPE,), scale=scale, lb=0, ub=span, conditional=True) - mean

    high = 100.0 * span
    if excess(high) < 0:  # a mean near the longest clip: as skewed as the range allows
        return high
    return float(brentq(excess, 1e-6, high, xtol=1e-6))


def draw_duration(rng: np.random.Generator, lo: float, hi: float, mean: float) -> float:
    from scipy.stats import gamma

    dist = gamma(DURATION_SHAPE, scale=duration_scale(lo, hi, mean))
    return float(lo + dist.ppf(rng.uniform(0.0, dist.cdf(hi - lo))))


@dataclass
class Episode:
    """One expressive episode: the face (and maybe the voice) rises to an apex, holds and returns to rest."""

    length: float  # seconds, onset to offset (at least its voice plus VOICE_PAD_S on each side)
    strength: float  # relative to the clip's strongest episode (1.0)
    rise: float  # share of the length spent rising to the apex
    fall: float  # share of the length spent falling back to rest
    vocal: str  # "burst", "speech" (the sentence, said with feeling) or "none"
    burst: str = ""  # the burst token, when vocal == "burst"
    start: float = 0.0  # set when the clip is laid out

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Strength over time: smooth onset, apex hold, smooth offset; 0 outside the episode."""
        x = (np.asarray(t) - self.start) / self.length
        up = np.clip(x / self.rise, 0, 1)
        down = np.clip((1 - x) / self.fall, 0, 1)
        shape = np.where((x < 0) | (x > 1), 0.0, np.minimum(up, down))
        return self.strength * (0.5 - 0.5 * np.cos(np.pi * shape))

    def voice_start(self, voice_s: float) -> float:
        """Where its voice begins: around the apex, wholly inside the episode."""
        room = max(self.length - voice_s - 2 * VOICE_PAD_S, 0.0)
        return self.start + VOICE_PAD_S + room * self.rise / (self.rise + self.fall)


def profile(episodes: list[Episode], times: np.ndarray) -> np.ndarray:
    """The expression's strength over the clip (episodes never overlap)."""
    out = np.zeros_like(times, dtype=float)
    for episode in episodes:
        out = np.maximum(out, episode(times))
    return out


def needed_s(blocks: list[float]) -> float:
    return float(sum(blocks)) + 2 * EDGE_S


def place(rng: np.random.Generator, blocks: list[float], duration: float) -> list[float]:
    """Start times for non-overlapping blocks (episodes, a neutral sentence) in random order, the clip's free time
    split at random between the gaps."""
    free = max(duration - needed_s(blocks), 0.0)
    gaps = rng.dirichlet(np.ones(len(blocks) + 1)) * free
    starts, t = [0.0] * len(blocks), EDGE_S
    for gap, i in zip(gaps, rng.permutation(len(blocks))):
        t += gap
        starts[int(i)] = t
        t += blocks[int(i)]
    return starts
