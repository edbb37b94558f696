"""Reliability cues: a covered face, silence and noise move the cues the way the quality scorer is told they do."""

import numpy as np
import pytest

from emi.features.cues import AUDIO_CUES, VISUAL_CUES, audio_cues, softmax_confidence, visual_cues
from emi.data.media import AUDIO_SAMPLE_RATE

V = {name: k for k, name in enumerate(VISUAL_CUES)}
A = {name: k for k, name in enumerate(AUDIO_CUES)}
FPS = 5.0
STEP = int(AUDIO_SAMPLE_RATE / FPS)


class Fer:
    """An encoder whose features end in expression logits (as the FER encoder's do)."""

    @staticmethod
    def expression_logits(features: np.ndarray) -> np.ndarray:
        return features[:, -7:]


def face(seed: int = 0, side: int = 64) -> np.ndarray:
    """A textured mid-grey frame (uint8 RGB)."""
    return np.random.default_rng(seed).integers(60, 200, (side, side, 3), dtype=np.uint8)


def test_an_occluded_face_is_darker_with_more_black_pixels_and_no_detection_reads_zero():
    clean = face()
    covered = clean.copy()
    covered[32:, :] = 0  # the lower half covered by an opaque object, as the occlusion damage does
    feats = np.zeros((2, 10), np.float32)
    cues = visual_cues([clean, covered], [True, False], feats, Fer())
    assert cues.shape == (2, len(VISUAL_CUES)) and cues.dtype == np.float32
    assert ((cues >= 0) & (cues <= 1)).all()
    assert cues[1, V["luminance"]] < cues[0, V["luminance"]]
    assert cues[0, V["dark_fraction"]] == 0 and cues[1, V["dark_fraction"]] == pytest.approx(0.5)
    assert cues[1, V["contrast"]] > cues[0, V["contrast"]]  # half black, half grey: a wide spread
    assert cues[:, V["face_found"]].tolist() == [1.0, 0.0]
    assert visual_cues([clean], None, feats[:1], Fer())[0, V["face_found"]] == 1.0  # no detector: taken as a face
    assert visual_cues([], None, feats[:0], Fer()).shape == (0, len(VISUAL_CUES))


def test_expression_confidence_is_zero_for_uniform_logits_and_one_for_a_certain_class():
    logits = np.zeros((3, 7), np.float32)
    logits[1, 3] = 50.0
    logits[2, 3] = 1.0
    conf = softmax_confidence(logits)
    assert conf[0] == pytest.approx(0.0, abs=1e-6) and conf[1] == pytest.approx(1.0, abs=1e-6)
    assert 0 < conf[2] < 1
    feats = np.concatenate([np.ones((3, 4), np.float32), logits], axis=1)
    np.testing.assert_allclose(visual_cues([face()] * 3, None, feats, Fer())[:, V["expression_confidence"]], conf)
    assert (visual_cues([face()] * 3, None, feats, object())[:, V["expression_confidence"]] == 0).all(), \
        "an encoder without a classifier gives no confidence"


def test_silence_is_all_zero_noise_is_loud_and_flat_and_a_tone_is_not_flat():
    rng = np.random.default_rng(0)
    n = 4
    silence = np.zeros(n * STEP, np.float32)
    noise = rng.normal(0, 0.1, n * STEP).astype(np.float32)
    t = np.arange(n * STEP) / AUDIO_SAMPLE_RATE
    tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    quiet, loud, pure = (audio_cues(w, n, FPS) for w in (silence, noise, tone))
    assert quiet.shape == (n, len(AUDIO_CUES)) and quiet.dtype == np.float32
    assert (quiet[:, [A["level"], A["flatness"]]] == 0).all()
    assert (loud[:, A["level"]] > 0.7).all()  # -20 dBFS
    assert (loud[:, A["flatness"]] > 0.4).all() and (pure[:, A["flatness"]] < 0.05).all()
    assert (loud[:, A["speech"]] < 0.5).all(), "white noise is not speech"
    for cues in (quiet, loud, pure):
        assert ((cues >= 0) & (cues <= 1)).all()
    assert (audio_cues(None, n, FPS) == 0).all() and audio_cues(None, n, FPS).shape == (n, len(AUDIO_CUES))


def test_audio_cues_follow_the_step_grid():
    """Loud in the second step only: the level cue is high there alone (cue rows are the feature rows)."""
    wave = np.zeros(3 * STEP, np.float32)
    wave[STEP:2 * STEP] = np.random.default_rng(1).normal(0, 0.1, STEP)
    level = audio_cues(wave, 3, FPS)[:, A["level"]]
    assert level[1] > 0.7 and level[0] == 0 and level[2] == 0
