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


class Wav2Vec2Encoder:
    """transformers Wav2Vec2: last hidden states at ~50 Hz (1024-d for the large models)."""

    frame_rate = 50.0

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        offline_env(resolved)
        if resolved.random_init:
            config = Wav2Vec2Config(hidden_size=spec.dim, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=2 * spec.dim)
            self.model = Wav2Vec2Model(config)
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
