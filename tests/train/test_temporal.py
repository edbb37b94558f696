"""Regression test for the temporal path (the TCN over the face, the gated BiLSTM over the voice).

Clips whose labels live only in time order: a brief episode at a random position where one feature ramps up or
down. The ramp is symmetric, so the clip mean is the same either way, and shuffling the steps leaves the same
multiset of values: only a model that reads the steps in order can tell. Three emotions follow the face's ramp, three
the voice's. The tiny profile's Stage II (with concat fusion, so that neither modality can lose the fusion
weight to the other: with quality or gated fusion one modality's ramp was learnt and the other's was not) learns
both; the same check on the same data fails when the temporal
blocks are bypassed (``stage2.temporal: false``) or the steps are shuffled within each clip, as a broken temporal
path would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emi.config import EMOTIONS
from emi.data.sequences import SequenceData
from emi.train.fusion import score_model, train_model
from tests.conftest import tiny

# the fewest epochs (one cosine cycle) with a margin: the voice's ramp is learnt late, valid Pearson face / voice at
# 20 epochs 0.81 / 0.11, 25: 0.98 / 0.74, 30: 0.98 / 0.96, 35: 0.985 / 0.985, 50: 0.98 / 0.99 (width 128). WIDTH:
# half the tiny profile's, with the same verdicts in 62 % of the time (2-core EPYC, 35 epochs: width 128 0.985 /
# 0.986 in 32.5 s, width 64 0.985 / 0.978 in 20.1 s; the broken variants -0.10 ... 0.09 at either width)
STEPS, DIM, EPISODE, EPOCHS, WIDTH = 24, 8, 6, 35, 64


def _ramp_clips(n: int, seed: int, shuffle: bool = False) -> SequenceData:
    rng = np.random.default_rng(seed)
    visual, audio, labels = [], [], []
    ramp = np.linspace(-1.0, 1.0, EPISODE)
    for _ in range(n):
        clip = []
        directions = rng.choice([-1.0, 1.0], size=2)  # face, voice: ramp up (high intensity) or down
        for direction in directions:
            x = rng.normal(0.0, 0.1, (STEPS, DIM)).astype(np.float32)
            start = rng.integers(0, STEPS - EPISODE + 1)
            x[start:start + EPISODE, 0] += direction * rng.uniform(1.0, 2.0) * ramp  # the clip mean does not move
            clip.append(rng.permutation(x) if shuffle else x)
        visual.append(clip[0])
        audio.append(clip[1])
        high = (directions + 1) / 2  # 0 or 1 per channel
        labels.append(np.concatenate([0.2 + 0.6 * high[0] + rng.normal(0, 0.05, 3),
                                      0.2 + 0.6 * high[1] + rng.normal(0, 0.05, 3)]))
    text, usable = np.zeros((n, DIM), np.float32), np.array([[True, True, False]] * n)  # no words: nothing to memorise
    return SequenceData([f"c{i}" for i in range(n)], visual, audio, text, usable,
                        np.clip(np.asarray(labels, np.float32), 0, 1))


def _valid_pearson(temporal: bool = True, shuffle: bool = False) -> tuple[float, float]:
    torch.set_num_threads(1)
    # concat: each modality reaches the head (no fusion weight to lose)
    base = tiny("stage2.fusion=concat", f"stage2.width={WIDTH}").stage2
    p = base.model_copy(update={
        "temporal": temporal, "reliability_cues": False, "batch_size": 16, "pearson_loss_weight": 0.0,
        "validate_every": EPOCHS, "augment": base.augment.model_copy(update={"modality_dropout": 0.0}),
        "schedule": base.schedule.model_copy(update={"epochs": EPOCHS, "cycle_epochs": EPOCHS})})
    train, valid = _ramp_clips(200, 0, shuffle), _ramp_clips(64, 1, shuffle)
    model, _, _ = train_model(p, 7, train, valid, None, log_epochs=False)
    s = score_model(model, valid, 32)
    face, voice = (float(np.mean([s[f"pearson_{e}"] for e in half])) for half in (EMOTIONS[:3], EMOTIONS[3:]))
    return face, voice


@pytest.mark.slow  # a Stage-II training of ~20 s
def test_the_temporal_blocks_read_what_only_time_order_carries():
    face, voice = _valid_pearson()
    assert face > 0.8 and voice > 0.8, (face, voice)  # the TCN and the gated BiLSTM both read the ramps (0.985)


@pytest.mark.slow
@pytest.mark.parametrize("break_", ["no temporal blocks", "steps shuffled"])
def test_the_same_check_fails_when_the_temporal_path_is_broken(break_):
    face, voice = _valid_pearson(temporal=break_ != "no temporal blocks", shuffle=break_ == "steps shuffled")
    assert face < 0.3 and voice < 0.3, (break_, face, voice)  # about 0 (-0.12 ... 0.06)
