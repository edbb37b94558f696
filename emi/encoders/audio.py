"""Audio encoders (hidden states at a fixed frame rate): whisper's encoder (CTranslate2) and Wav2Vec2."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from emi.config import EncoderSpec
from emi.data.media import AUDIO_SAMPLE_RATE
from emi.encoders.base import EncoderError, Resolved, build, check_dim, local_only, offline_env
from emi.encoders.tuning import TunableBlocks


class AudioEncoder(Protocol):
    dim: int
    frame_rate: float  # hidden states per second
    resolved: Resolved

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """(N, samples) 16 kHz windows of equal length -> (N, frames, dim) hidden states."""


class WhisperEncoder:
    """The (CTranslate2) whisper encoder: log-mel -> hidden states at 50 Hz; real pretrained weights offline."""

    frame_rate = 50.0

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from faster_whisper import WhisperModel

        offline_env(resolved)
        location = resolved.location if resolved.source != "hub" else spec.name
        if resolved.random_init:
            raise EncoderError("extract.audio: whisper-encoder cannot be random-initialised (CTranslate2 loads "
                               "converted checkpoints only); use kind wav2vec2 with allow_random_init")
        compute = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
        self.whisper = WhisperModel(location, device=device.type, compute_type=compute,
                                    cpu_threads=torch.get_num_threads(), local_files_only=local_only(resolved))
        self.features = self.whisper.feature_extractor
        self.max_samples = self.features.n_samples  # 30 s: whisper's positional table
        self.dim = int(self.whisper.model.encode(self._mel(np.zeros((1, AUDIO_SAMPLE_RATE), np.float32))).shape[-1])
        self.resolved = resolved
        check_dim(resolved.role, spec, self.dim)

    def _mel(self, windows: np.ndarray):
        import ctranslate2

        mels = np.stack([self.features(w)[:, : w.shape[0] // self.features.hop_length] for w in windows])
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(mels, dtype=np.float32))

    def encode(self, windows: np.ndarray) -> np.ndarray:
        if windows.shape[1] > self.max_samples:
            raise EncoderError(f"whisper encoder windows are at most 30 s; got {windows.shape[1] / AUDIO_SAMPLE_RATE} s")
        return np.asarray(self.whisper.model.encode(self._mel(windows), to_cpu=True), dtype=np.float32)


WAV2VEC2_SHAPES = {
    "wav2vec2-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096},
    "wav2vec2-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "intermediate_size": 3072},
}
"""The published Wav2Vec2 checkpoints' transformer shapes, by the family their hub name carries
(``facebook/wav2vec2-large-960h``, ``-large-lv60``, ``-large-xlsr-53``; ``-base-960h``): what a random
initialisation named after one of them builds, so that a throughput measured without the hub is the checkpoint's.
The convolutional feature encoder is transformers' default (7 layers of 512 channels in both families)."""
STAND_IN = {"num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_per_width": 2}
"""A random Wav2Vec2 under any other name (tests): 2 transformer layers at the spec's width."""


def random_wav2vec2_shape(name: str, dim: int) -> dict[str, int]:
    """The Wav2Vec2Config shape of a random initialisation named ``name``: its checkpoint family's
    (``WAV2VEC2_SHAPES``) when the name carries one, else the small ``STAND_IN`` ``dim`` wide."""
    family = next((f for f in WAV2VEC2_SHAPES if f in name.lower()), None)
    if family is None:
        return {"hidden_size": dim, "num_hidden_layers": STAND_IN["num_hidden_layers"],
                "num_attention_heads": STAND_IN["num_attention_heads"],
                "intermediate_size": STAND_IN["intermediate_per_width"] * dim}
    shape = WAV2VEC2_SHAPES[family]
    if shape["hidden_size"] != dim:
        raise EncoderError(f"extract.audio: {name} is {shape['hidden_size']}-d ({family}), but extract.audio.dim is "
                           f"{dim}")
    return dict(shape)


class Wav2Vec2Encoder:
    """transformers Wav2Vec2: last hidden states at ~50 Hz (1024-d for the large models)."""

    frame_rate = 50.0

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        offline_env(resolved)
        if resolved.random_init:
            self.model = Wav2Vec2Model(Wav2Vec2Config(**random_wav2vec2_shape(spec.name, spec.dim)))
            self.normalize = True
        else:
            local = local_only(resolved)
            self.model = Wav2Vec2Model.from_pretrained(resolved.location, local_files_only=local)
            fe = Wav2Vec2FeatureExtractor.from_pretrained(resolved.location, local_files_only=local)
            self.normalize = bool(fe.do_normalize)
        self.model.eval().to(device=device, dtype=dtype)
        self.device, self.dtype, self.resolved = device, dtype, resolved
        self.dim = int(self.model.config.hidden_size)
        check_dim(resolved.role, spec, self.dim)

    @torch.no_grad()
    def _prepare(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows).float()
        if self.normalize:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        return x.to(self.device, self.dtype)

    def features(self, windows: np.ndarray) -> torch.Tensor:
        """Differentiable (N, frames, dim) hidden states (what Stage I fine-tuning trains through)."""
        return self.model(self._prepare(windows)).last_hidden_state

    @torch.inference_mode()
    def encode(self, windows: np.ndarray) -> np.ndarray:
        return self.features(windows).float().cpu().numpy()

    def blocks(self) -> TunableBlocks:
        n = len(self.model.encoder.layers)
        # the "stable" (large, LV-60) variants normalise after the last layer; the base ones before the first
        after = ["encoder.layer_norm"] if self.model.config.do_stable_layer_norm else []
        return TunableBlocks(self.model, [f"encoder.layers.{i}" for i in range(n)], after)


AUDIO_FACTORIES = {"whisper-encoder": WhisperEncoder, "wav2vec2": Wav2Vec2Encoder}


def load_audio(spec: EncoderSpec, device: torch.device, dtype: torch.dtype) -> AudioEncoder:
    return build(AUDIO_FACTORIES, spec, "audio", device, dtype)
