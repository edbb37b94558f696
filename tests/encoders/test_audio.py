"""Audio encoders: the packaged whisper encoder (50 Hz states), wav2vec2, and pooling states onto the step grid."""

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec
from emi.encoders.audio import Wav2Vec2Encoder, load_audio
from emi.encoders.base import EncoderError
from emi.features.encode import pool_to_grid
from tests.conftest import tiny

CPU = torch.device("cpu")




@pytest.mark.slow
def test_whisper_encoder_is_real_and_50hz():
    enc = load_audio(tiny().extract.audio, CPU, torch.float32)
    assert enc.resolved.source == "packaged"
    out = enc.encode(np.zeros((2, 16000 * 2), np.float32))
    assert out.shape == (2, 100, 384)
    with pytest.raises(EncoderError, match="at most 30 s"):
        enc.encode(np.zeros((1, 16000 * 31), np.float32))


def test_whisper_encoder_cannot_be_random():
    spec = EncoderSpec(kind="whisper-encoder", name="not-packaged", pretrained="random", allow_random_init=True,
                       dim=384)
    with pytest.raises(EncoderError, match="cannot be random-initialised"):
        load_audio(spec, CPU, torch.float32)


@pytest.mark.slow  # imports transformers
def test_random_wav2vec2_gives_50hz_states_of_its_dim():
    spec = EncoderSpec(kind="wav2vec2", name="w2v-test", pretrained="random", allow_random_init=True, dim=32)
    enc = load_audio(spec, CPU, torch.float32)
    assert isinstance(enc, Wav2Vec2Encoder) and enc.dim == 32
    out = enc.encode(np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32))
    assert out.shape[0] == 2 and out.shape[2] == 32 and abs(out.shape[1] - 50) <= 1


def test_pooling_averages_the_states_inside_each_step():
    # emi.features.featurize.pool_to_grid: how the audio encoders' 50 Hz states meet the visual grid
    states = np.arange(10, dtype=np.float32)[:, None]  # 10 states at 50 Hz = two 0.1 s steps at 10 fps
    np.testing.assert_allclose(pool_to_grid(states, 50, 10, 2).ravel(), [2.0, 7.0])
