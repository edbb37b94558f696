"""Speech recognition: faster-whisper models (local folder, packaged tiny.en, or hub size/id) and what turns clips
into transcript-table rows: one clip at a time (``transcribe_clip``, also used by ``emi predict``) or several clips'
speech windows per batch (``transcribe_clips``, for a GPU)."""

from __future__ import annotations

import bisect
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
    """Whisper's segments and info for one clip, and a note when the repetition guard decoded it (``_guarded``)."""
    segments, info = _decode(model, wave, cfg, guard=False)
    segments, again, note = _guarded(model, wave, segments, cfg)
    return segments, info if again is None else again, note


def _guarded(model, wave: np.ndarray, segments: list, cfg: TranscribeParams) -> tuple[list, Any, str]:
    """A clip's segments, decoded again with the repetition guard when they loop: (segments, the new decode's info
    or None, a note).

    Whisper's own answer to a loop (a window above ``compression_ratio_threshold``) is to decode again at a higher
    temperature, which samples from an unseeded RNG; here the clip is decoded again at the same temperatures with
    ``no_repeat_ngram_size`` / ``repetition_penalty``, which is deterministic, and only when it loops: the guard
    would also forbid a repeated phrase that was really said."""
    ratio = compression_ratio(segments)
    guard_on = cfg.no_repeat_ngram_size > 0 or cfg.repetition_penalty > 1
    if not (guard_on and ratio > cfg.compression_ratio_threshold):
        return segments, None, ""
    segments, info = _decode(model, wave, cfg, guard=True)
    return segments, info, (f"repetition guard: decoded again (compression ratio {ratio:.2f} > "
                            f"{cfg.compression_ratio_threshold:g})")


def clip_audio(clip: Clip, silence_dbfs: float) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """A clip's 16 kHz waveform to recognise, or its finished row (unreadable, no audio track, silent)."""
    try:
        wave = decode_audio(clip.path, AUDIO_SAMPLE_RATE)
    except MediaError as exc:
        return None, _row(clip, "error", str(exc))
    if wave is None:
        return None, _row(clip, "no_audio", "no audio stream")
    level = rms_dbfs(wave)
    if level < silence_dbfs:
        return None, _row(clip, "silent", f"audio RMS {level:.1f} dBFS < {silence_dbfs:g} dBFS",
                          duration_s=round(wave.size / AUDIO_SAMPLE_RATE, 4))
    return wave, None


def recognised_row(clip: Clip, wave: np.ndarray, segments: list, language: str, guarded: str) -> dict[str, Any]:
    """The transcript-table row of a recognised clip."""
    text = " ".join(s.text.strip() for s in segments).strip()
    if segments:
        # whisper's avg_logprob is a per-token mean: weighting by token count gives the clip's per-token mean
        weights = np.array([max(len(s.tokens), 1) for s in segments], dtype=np.float64)
        logprob = float(np.average([s.avg_logprob for s in segments], weights=weights))
        no_speech = float(max(s.no_speech_prob for s in segments))
    else:
        logprob, no_speech = math.nan, 1.0
    detail = "; ".join(d for d in (guarded, "" if text else "no speech recognised") if d)
    return _row(clip, "ok" if text else "empty", detail, duration_s=round(wave.size / AUDIO_SAMPLE_RATE, 4), text=text,
                language=language, avg_logprob=round(logprob, 5), no_speech_prob=round(no_speech, 5),
                compression_ratio=round(compression_ratio(segments), 4))


def transcribe_clip(model, clip: Clip, cfg: TranscribeParams, silence_dbfs: float) -> dict[str, Any]:
    """One transcript-table row; a clip that cannot be read or recognised gets a status, never an exception."""
    wave, row = clip_audio(clip, silence_dbfs)
    if row is not None:
        return row
    try:
        segments, info, guarded = recognise(model, wave, cfg)
    except (RuntimeError, ValueError) as exc:
        return _row(clip, "error", f"{clip.path}: ASR failed: {type(exc).__name__}: {exc}",
                    duration_s=round(wave.size / AUDIO_SAMPLE_RATE, 4))
    return recognised_row(clip, wave, segments, info.language or cfg.language, guarded)


# ----------------------------------------------------------------------------- batched: several clips per batch
def speech_of(wave: np.ndarray, cfg: TranscribeParams) -> np.ndarray:
    """What whisper decodes of a clip: with ``vad``, its speech joined (Silero's chunks, as faster-whisper's own VAD
    filter does before a sequential decode); else all of it."""
    if not cfg.vad:
        return wave
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    chunks = get_speech_timestamps(wave, VadOptions(), sampling_rate=AUDIO_SAMPLE_RATE)
    if not chunks:
        return wave[:0]
    return np.concatenate(collect_chunks(wave, chunks, sampling_rate=AUDIO_SAMPLE_RATE)[0]).astype(np.float32)


def windows_of(speech: list[np.ndarray], window_s: float) -> tuple[np.ndarray, list[dict[str, float]], list[int]]:
    """The clips' speech laid end to end with a silent second between clips, cut into windows of at most
    ``window_s`` that never cross a clip: (audio, windows as {"start", "end"} in seconds, each window's clip)."""
    sr, step = AUDIO_SAMPLE_RATE, int(window_s * AUDIO_SAMPLE_RATE)
    pieces, windows, owner, at = [], [], [], 0
    for k, s in enumerate(speech):
        for start in range(0, s.size, step):
            windows.append({"start": (at + start) / sr, "end": (at + min(start + step, s.size)) / sr})
            owner.append(k)
        pieces += [s.astype(np.float32), np.zeros(sr, np.float32)]
        at += s.size + sr
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), windows, owner


def recognise_batch(model, waves: list[np.ndarray], cfg: TranscribeParams) -> list[tuple[list, str]]:
    """Whisper's segments for several clips and each clip's guard note, their speech windows decoded
    ``transcribe.batch_size`` at a time (faster-whisper's ``BatchedInferencePipeline``: one beam search over a batch
    of windows, what loads a GPU). Each window is decoded on its own at ``temperatures[0]``, as a sequential decode
    with ``condition_on_previous_text=False`` does; a clip whose windows loop (compression ratio above the
    threshold) is decoded again alone with the repetition guard (``_guarded``), as in ``recognise``."""
    from faster_whisper import BatchedInferencePipeline

    audio, windows, owner = windows_of([speech_of(w, cfg) for w in waves], model.feature_extractor.chunk_length)
    segments: list[list] = [[] for _ in waves]
    if windows:
        found, _ = BatchedInferencePipeline(model).transcribe(
            audio, language=cfg.language, beam_size=cfg.beam_size, temperature=cfg.temperatures[0],
            condition_on_previous_text=False, clip_timestamps=windows, vad_filter=False, without_timestamps=True,
            batch_size=cfg.batch_size)
        starts = [w["start"] for w in windows]
        for s in found:  # a window's segments start inside it; windows are a second apart at least
            segments[owner[bisect.bisect_right(starts, s.start + 5e-3) - 1]].append(s)
    return [_guarded(model, wave, segs, cfg)[::2] for wave, segs in zip(waves, segments)]


def transcribe_clips(model, clips: list[Clip], cfg: TranscribeParams, silence_dbfs: float,
                     read=map) -> list[dict[str, Any]]:
    """Transcript-table rows of several clips in order, their speech recognised in batches (``recognise_batch``);
    ``read`` maps ``clip_audio`` over the clips (a thread pool's map reads several at once). A batch that fails
    is decoded again clip by clip, so one bad clip gets an error row and the others their text."""
    read_out = list(read(lambda clip: clip_audio(clip, silence_dbfs), clips))
    todo = [k for k, (wave, row) in enumerate(read_out) if row is None]
    rows: list[dict[str, Any] | None] = [row for _, row in read_out]
    try:
        results = recognise_batch(model, [read_out[k][0] for k in todo], cfg)
    except (RuntimeError, ValueError) as exc:
        log.warning("batched ASR failed (%s: %s); decoding these %d clips one by one", type(exc).__name__, exc,
                    len(todo))
        results = None
    for j, k in enumerate(todo):
        clip, wave = clips[k], read_out[k][0]
        if results is None:
            rows[k] = transcribe_clip(model, clip, cfg, silence_dbfs)
        else:
            segs, guarded = results[j]
            rows[k] = recognised_row(clip, wave, segs, cfg.language, guarded)
    return rows
