"""Speech recognition: faster-whisper models (local folder, packaged tiny.en, or hub size/id) and the one
function that turns a clip into a transcript-table row (used by ``transcribe`` and ``emi predict``)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from emi.config import EncoderSpec, TranscribeParams
from emi.data.dataset import Clip
from emi.data.media import AUDIO_SAMPLE_RATE, MediaError, decode_audio, rms_dbfs
from emi.encoders.base import EncoderError, hub_failures, local_only, offline_env, resolve, resolve_device

log = logging.getLogger(__name__)
logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per clip is noise in a stage log


def load_asr(spec: EncoderSpec, device: str, compute_type: str, workers: int = 1):
    """A faster-whisper model from a local CTranslate2 folder, the packaged tiny.en, or a hub size/id."""
    from faster_whisper import WhisperModel

    if spec.kind != "faster-whisper":
        raise EncoderError(f"unknown ASR kind {spec.kind!r}; known: faster-whisper")
    resolved = resolve(spec, "transcribe.asr")
    if resolved.random_init:
        raise EncoderError("transcribe.asr cannot be random-initialised")
    offline_env(resolved)
    dev = resolve_device(device).type
    if dev == "cpu" and compute_type in ("float16", "bfloat16", "int8_float16"):
        log.warning("compute_type %s on CPU; using int8", compute_type)
        compute_type = "int8"
    with hub_failures(resolved):
        model = WhisperModel(resolved.location, device=dev, compute_type=compute_type, num_workers=workers,
                             cpu_threads=max(1, torch.get_num_threads() // workers),
                             local_files_only=local_only(resolved))
    return model, resolved


def _row(clip: Clip, status: str, detail: str = "", duration_s: float = math.nan, text: str = "",
         language: str = "", avg_logprob: float = math.nan, no_speech_prob: float = math.nan) -> dict[str, Any]:
    return {"id": clip.id, "split": clip.split, "text": text, "language": language, "avg_logprob": avg_logprob,
            "no_speech_prob": no_speech_prob, "duration_s": duration_s, "status": status, "detail": detail}


def transcribe_clip(model, clip: Clip, cfg: TranscribeParams, silence_dbfs: float) -> dict[str, Any]:
    """One transcript-table row; a clip that cannot be read or recognised gets a status, never an exception."""
    try:
        wave = decode_audio(clip.path, AUDIO_SAMPLE_RATE)
    except MediaError as exc:
        return _row(clip, "error", str(exc))
    if wave is None:
        return _row(clip, "no_audio", "no audio stream")
    duration = round(wave.size / AUDIO_SAMPLE_RATE, 4)
    level = rms_dbfs(wave)
    if level < silence_dbfs:
        return _row(clip, "silent", f"audio RMS {level:.1f} dBFS < {silence_dbfs:g} dBFS",
                    duration_s=duration)
    try:
        segments, info = model.transcribe(wave, language=cfg.language, beam_size=cfg.beam_size,
                                          vad_filter=cfg.vad, condition_on_previous_text=False,
                                          temperature=list(cfg.temperatures))
        segments = list(segments)  # a generator: decoding (and its failures) happens here
    except (RuntimeError, ValueError) as exc:
        return _row(clip, "error", f"{clip.path}: ASR failed: {type(exc).__name__}: {exc}", duration_s=duration)
    text = " ".join(s.text.strip() for s in segments).strip()
    if segments:
        # whisper's avg_logprob is a per-token mean: weighting by token count gives the clip's per-token mean
        weights = np.array([max(len(s.tokens), 1) for s in segments], dtype=np.float64)
        logprob = float(np.average([s.avg_logprob for s in segments], weights=weights))
        no_speech = float(max(s.no_speech_prob for s in segments))
    else:
        logprob, no_speech = math.nan, 1.0
    return _row(clip, "ok" if text else "empty", "" if text else "no speech recognised", duration_s=duration,
                text=text, language=info.language or cfg.language, avg_logprob=round(logprob, 5),
                no_speech_prob=round(no_speech, 5))
