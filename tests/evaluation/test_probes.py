"""Linear probes on clip-mean features: the ablation's baseline row and the per-modality control probe table."""

import numpy as np
import pandas as pd
import pytest

from emi.config import EMOTIONS
from emi.evaluation.ceiling import rendered_controls
from emi.evaluation.probes import PROBE_COLUMNS, clip_means, control_probes, linear_probe
from emi.data.sequences import SequenceData

ALPHAS = (0.1, 1.0, 10.0, 100.0)


def sequences(n: int, seed: int, mask_audio_of: tuple[int, ...] = ()) -> tuple[SequenceData, np.ndarray]:
    """n clips whose visual clip means carry a hidden 2-d factor linearly (audio and text are noise); returns the
    data (labels: linear in the factor) and the factor."""
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((n, 2))
    mix = np.random.default_rng(0).standard_normal((2, 8))  # the same "encoder" for every split
    visual = [factor[i] @ mix + 0.05 * rng.standard_normal((int(rng.integers(3, 7)), 8)) for i in range(n)]
    audio = [rng.standard_normal((v.shape[0], 5)) for v in visual]
    mask = np.ones((n, 3), bool)
    mask[list(mask_audio_of), 1] = False
    labels = np.clip(0.5 + 0.15 * factor @ np.random.default_rng(1).standard_normal((2, len(EMOTIONS))), 0, 1)
    data = SequenceData([f"{seed}{i:04d}" for i in range(n)], visual, audio, rng.standard_normal((n, 4)), mask,
                        labels.astype(np.float32))
    return data, factor


def test_clip_means_are_the_time_mean_per_modality():
    data, _ = sequences(5, seed=3)
    np.testing.assert_allclose(clip_means(data, "V")[2], data.visual[2].mean(0))
    np.testing.assert_allclose(clip_means(data, "A")[4], data.audio[4].mean(0))
    np.testing.assert_allclose(clip_means(data, "T"), data.text)


def test_linear_probe_scores_valid_with_the_ablation_scores():
    train, _ = sequences(120, seed=1, mask_audio_of=(0, 5, 9))
    valid, _ = sequences(40, seed=2, mask_audio_of=(1,))
    s = linear_probe(train, valid, ALPHAS)
    assert {"pearson_mean", "mse", "n", *[f"pearson_{e}" for e in EMOTIONS]} <= set(s) and s["n"] == 40
    assert s["pearson_mean"] > 0.9  # the labels are linear in what the visual means carry
    assert linear_probe(train, valid, ALPHAS, modalities="A")["pearson_mean"] < 0.5  # audio: noise only


def test_control_probe_recovers_a_linearly_encoded_control_from_its_modality_only():
    train, f_train = sequences(150, seed=1, mask_audio_of=(3,))
    valid, f_valid = sequences(50, seed=2)
    controls = pd.DataFrame({"face_smile": np.r_[f_train[:, 0], f_valid[:, 0]],
                             "pitch": np.r_[f_train[:, 1] ** 2, f_valid[:, 1] ** 2]},  # not linear in the means
                            index=train.ids + valid.ids)
    table = control_probes(train, valid, controls.drop(index=valid.ids[0]), ALPHAS)
    assert list(table.columns) == list(PROBE_COLUMNS) and table["control"].tolist() == ["face_smile", "pitch"]
    smile = table.set_index("control").loc["face_smile"]
    assert smile["V"] > 0.95 and smile["VAT"] > 0.9  # recoverable from the visual means, linearly
    assert smile["A"] < 0.2 and smile["T"] < 0.2  # the other modalities carry nothing of it
    assert table.set_index("control").loc["pitch", "V"] < 0.3  # a non-linear function stays out of a linear probe


def test_rendered_controls_are_the_generator_s_face_and_prosody_columns(tiny_dataset, tmp_path):
    controls, source = rendered_controls(tiny_dataset)
    assert "face_smile" in controls and "pitch" in controls and "latent_Joy" not in controls
    assert controls.notna().all().all() and "rendered face controls + prosody" in source
    assert rendered_controls(tmp_path) is None  # licensed data: no generator folder
    with pytest.raises(KeyError):
        controls.loc["not-a-clip"]
