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
         language: str = "", avg_logprob: float = math.nan, no_speech_prob: float = math.nan,
         compression_ratio: float = math.nan) -> dict[str, Any]:
    return {"id": clip.id, "split": clip.split, "text": text, "language": language, "avg_logprob": avg_logprob,
            "no_speech_prob": no_speech_prob, "compression_ratio": compression_ratio, "duration_s": duration_s,
            "status": status, "detail": detail}


def compression_ratio(segments: list) -> float:
    """Whisper's loop measure for a clip: the highest gzip compression ratio of its decoding windows' text (each
    segment carries its window's). Per window, not of the whole transcript: long natural text compresses better
    (about 2.4 at 10,000 characters), a 30 s window's does not."""
    return max((float(s.compression_ratio) for s in segments), default=math.nan)


def _decode(model, wave: np.ndarray, cfg: TranscribeParams, guard: bool) -> tuple[list, Any]:
    options = {"no_repeat_ngram_size": cfg.no_repeat_ngram_size, "repetition_penalty": cfg.repetition_penalty}
    segments, info = model.transcribe(wave, language=cfg.language, beam_size=cfg.beam_size, vad_filter=cfg.vad,
                                      condition_on_previous_text=False, temperature=list(cfg.temperatures),
                                      compression_ratio_threshold=cfg.compression_ratio_threshold,
                                      **(options if guard else {}))
    return list(segments), info  # a generator: decoding (and its failures) happens here


def recognise(model, wave: np.ndarray, cfg: TranscribeParams) -> tuple[list, Any, str]:
    """Whisper's segments and info for one clip, and a note when the repetition guard decoded it.

    Whisper's own answer to a loop (a window above ``compression_ratio_threshold``) is to decode again at a higher
    temperature, which samples from an unseeded RNG; here the clip is decoded again at the same temperatures with
    ``no_repeat_ngram_size`` / ``repetition_penalty``, which is deterministic, and only when it loops: the guard
    would also forbid a repeated phrase that was really said."""
    segments, info = _decode(model, wave, cfg, guard=False)
    ratio = compression_ratio(segments)
    guard_on = cfg.no_repeat_ngram_size > 0 or cfg.repetition_penalty > 1
    if not (guard_on and ratio > cfg.compression_ratio_threshold):
        return segments, info, ""
    segments, info = _decode(model, wave, cfg, guard=True)
    return segments, info, (f"repetition guard: decoded again (compression ratio {ratio:.2f} > "
                            f"{cfg.compression_ratio_threshold:g})")


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
        segments, info, guarded = recognise(model, wave, cfg)
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
    detail = "; ".join(d for d in (guarded, "" if text else "no speech recognised") if d)
    return _row(clip, "ok" if text else "empty", detail, duration_s=duration, text=text,
                language=info.language or cfg.language, avg_logprob=round(logprob, 5),
                no_speech_prob=round(no_speech, 5), compression_ratio=round(compression_ratio(segments), 4))
