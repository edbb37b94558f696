"""Audio encoders: the packaged whisper encoder (50 Hz states), wav2vec2, and pooling states onto the step grid."""

import shutil

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec, load_params
from emi.encoders.audio import Wav2Vec2Encoder, load_audio, random_wav2vec2_shape
from emi.encoders.base import EncoderError, packaged_path
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


def test_a_random_wav2vec2_named_after_a_checkpoint_has_its_shape_and_any_other_name_a_small_stand_in():
    # the paper's facebook/wav2vec2-large-960h without the hub: 24 layers 1024 wide, what its throughput depends on
    large = random_wav2vec2_shape("facebook/wav2vec2-large-960h", 1024)
    assert (large["num_hidden_layers"], large["num_attention_heads"], large["intermediate_size"]) == (24, 16, 4096)
    assert random_wav2vec2_shape("facebook/wav2vec2-base-960h", 768)["num_hidden_layers"] == 12
    assert random_wav2vec2_shape("w2v-test", 32) == {"hidden_size": 32, "num_hidden_layers": 2,
                                                     "num_attention_heads": 4, "intermediate_size": 64}
    with pytest.raises(EncoderError, match="wav2vec2-large-960h is 1024-d.*extract.audio.dim is 768"):
        random_wav2vec2_shape("facebook/wav2vec2-large-960h", 768)


@pytest.mark.slow  # imports transformers
def test_random_wav2vec2_gives_50hz_states_of_its_dim():
    spec = EncoderSpec(kind="wav2vec2", name="w2v-test", pretrained="random", allow_random_init=True, dim=32)
    enc = load_audio(spec, CPU, torch.float32)
    assert isinstance(enc, Wav2Vec2Encoder) and enc.dim == 32
    out = enc.encode(np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32))
    assert out.shape[0] == 2 and out.shape[2] == 32 and abs(out.shape[1] - 50) <= 1


def save_tiny_wav2vec2_ctc(folder) -> torch.nn.Module:
    """A small random Wav2Vec2ForCTC in the hub's layout for facebook/wav2vec2-large-960h: the CTC model's
    config and weights (``wav2vec2.*`` keys) and its feature extractor's preprocessor_config.json."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, conv_dim=(16,) * 7, do_stable_layer_norm=True,
                            feat_extract_norm="layer")
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return model.wav2vec2


@pytest.mark.slow  # imports transformers
def test_wav2vec2_loads_a_local_hub_layout_folder_offline(tmp_path, no_hub):
    saved = save_tiny_wav2vec2_ctc(tmp_path / "wav2vec2-large-960h")
    spec = load_params(None, profile="paper").extract.audio.model_copy(
        update={"path": tmp_path / "wav2vec2-large-960h", "dim": 32})
    enc = load_audio(spec, CPU, torch.float32)
    assert isinstance(enc, Wav2Vec2Encoder) and enc.resolved.source == "local" and enc.normalize
    windows = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32)
    with torch.inference_mode():
        want = saved(enc._prepare(windows)).last_hidden_state.numpy()
    out = enc.encode(windows)
    assert out.shape[2] == 32 and abs(out.shape[1] - 50) <= 1
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)  # the saved weights, not a fresh init


@pytest.mark.slow
def test_whisper_encoder_loads_a_local_ctranslate2_folder_offline(tmp_path, no_hub):
    shutil.copytree(packaged_path("whisper-encoder", "tiny.en"), tmp_path / "small.en")
    spec = EncoderSpec(kind="whisper-encoder", name="small.en", path=tmp_path / "small.en", dim=384)
    local, packaged = load_audio(spec, CPU, torch.float32), load_audio(tiny().extract.audio, CPU, torch.float32)
    assert local.resolved.source == "local" and packaged.resolved.source == "packaged"
    windows = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32)
    np.testing.assert_allclose(local.encode(windows), packaged.encode(windows), rtol=1e-5, atol=1e-5)


def test_pooling_averages_the_states_inside_each_step():
    # emi.features.featurize.pool_to_grid: how the audio encoders' 50 Hz states meet the visual grid
    states = np.arange(10, dtype=np.float32)[:, None]  # 10 states at 50 Hz = two 0.1 s steps at 10 fps
    np.testing.assert_allclose(pool_to_grid(states, 50, 10, 2).ravel(), [2.0, 7.0])
