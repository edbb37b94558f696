"""Reliability cues: per-step signals of how usable a modality's features are, for the quality scorer.

The scorer of eqs. 7-8 sees only what a modality says (h_m); these cues tell it whether the signal behind h_m is
damaged: a covered face, a frame without a face, silence, noise. Every cue lies in [0, 1], one row per 5 fps step
(the rows of the modality's features), computed by ``emi.features.featurize`` from what the encoders see, so extract,
augment, robustness and predict all get the same numbers. A missing modality's cues are zeros (it is masked).

visual (``VISUAL_CUES``), per frame the visual encoder sees (the face crop when ``extract.face_crop``):
  face_found             1 when the face detector found a face in the frame, 0 when not; 1 without face_crop
                         (no detector runs, and the pipeline then takes the frame for the face)
  expression_confidence  the expression classifier's max softmax probability rescaled from [1/K, 1] to [0, 1]
                         (the FER encoder's K = 7 logits); 0 for an encoder without a classifier
  luminance              mean grey level / 255
  contrast               std of the grey level / 255, times 2 (the std of values in [0, 1] is at most 1/2)
  dark_fraction          share of near-black pixels (grey < ``DARK_LEVEL``): an opaque object, a covered lens

audio (``AUDIO_CUES``), per step of the 16 kHz wave the audio encoder sees:
  level                  RMS level in dBFS mapped from [``LEVEL_FLOOR_DBFS``, 0] to [0, 1] (clipped)
  speech                 mean Silero VAD speech probability (faster-whisper's packaged model, offline) of the
                         32 ms windows overlapping the step
  flatness               spectral flatness of the step (geometric / arithmetic mean of its Hann-windowed power
                         spectrum): ~0.56 for white noise, near 0 for voiced speech; 0 for a step below the floor
"""

from __future__ import annotations

import numpy as np

from emi.data.media import AUDIO_SAMPLE_RATE, rms_dbfs

CUE_VERSION = 1
"""In the extract and augment shard receipts: shards written before the cues (or with other cues) are recomputed."""
VISUAL_CUES: tuple[str, ...] = ("face_found", "expression_confidence", "luminance", "contrast", "dark_fraction")
AUDIO_CUES: tuple[str, ...] = ("level", "speech", "flatness")
CUES: dict[str, tuple[str, ...]] = {"visual": VISUAL_CUES, "audio": AUDIO_CUES}
"""The modalities with per-step cues (text has one vector per clip and no cue) and their columns, in order."""

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as OpenCV's RGB2GRAY
DARK_LEVEL = 16  # grey value (of 255) under which a pixel counts as near-black: video black is 16
CONTRAST_SCALE = 2.0  # grey std / 255 is at most 1/2
LEVEL_FLOOR_DBFS = -80.0  # level cue 0 at or below this RMS (below the quietest usable speech), 1 at full scale
VAD_WINDOW = 512  # samples per Silero VAD probability at 16 kHz (32 ms)
POWER_EPS = 1e-20  # keeps log(power) finite in an exactly zero frequency bin


def visual_cues(frames: list[np.ndarray], face_found: list[bool] | None, features: np.ndarray,
                encoder) -> np.ndarray:
    """(steps, len(VISUAL_CUES)) for one clip's frames (uint8 RGB, as encoded) and their encoder features."""
    out = np.zeros((len(frames), len(VISUAL_CUES)), np.float32)
    if not frames:
        return out
    out[:, 0] = 1.0 if face_found is None else np.asarray(face_found, np.float32)
    logits = getattr(encoder, "expression_logits", None)
    if logits is not None and len(features):
        out[:, 1] = softmax_confidence(logits(features))
    for k, frame in enumerate(frames):
        grey = frame.reshape(-1, 3).astype(np.float64) @ GREY_WEIGHTS
        out[k, 2] = grey.mean() / 255
        out[k, 3] = min(1.0, CONTRAST_SCALE * grey.std() / 255)
        out[k, 4] = np.mean(grey < DARK_LEVEL)
    return out


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per row, rescaled from [1/K, 1] (uniform .. certain) to [0, 1]."""
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    p = np.exp(z)
    top = (p / p.sum(-1, keepdims=True)).max(-1)
    k = logits.shape[-1]
    return ((top - 1 / k) / (1 - 1 / k)).astype(np.float32)


def step_edges(n_steps: int, fps: float) -> np.ndarray:
    """Sample index where each 1/fps step of the featurized wave starts (and where the last one ends)."""
    return np.round(np.arange(n_steps + 1) * AUDIO_SAMPLE_RATE / fps).astype(int)


def speech_probabilities(wave: np.ndarray) -> np.ndarray:
    """Silero VAD speech probability per ``VAD_WINDOW`` samples (faster-whisper's packaged ONNX model, one thread:
    the same wave gives the same numbers)."""
    from faster_whisper.vad import get_vad_model  # lazy: only the featurize path needs it

    padded = np.pad(wave.astype(np.float32), (0, (-wave.size) % VAD_WINDOW))
    if padded.size == 0:
        return np.zeros(0, np.float32)
    return np.asarray(get_vad_model()(padded), np.float32).reshape(-1)


def spectral_flatness(piece: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(piece.astype(np.float64) * np.hanning(piece.size))) ** 2 + POWER_EPS
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def audio_cues(wave: np.ndarray | None, n_steps: int, fps: float) -> np.ndarray:
    """(n_steps, len(AUDIO_CUES)) for one clip's featurized wave; zeros when the clip has no usable audio."""
    out = np.zeros((n_steps, len(AUDIO_CUES)), np.float32)
    if wave is None or n_steps == 0 or wave.size == 0:
        return out
    edges = step_edges(n_steps, fps)
    speech = speech_probabilities(wave)
    for k in range(n_steps):
        piece = wave[edges[k]:edges[k + 1]]
        if piece.size == 0:
            continue
        level = rms_dbfs(piece)
        out[k, 0] = np.clip((level - LEVEL_FLOOR_DBFS) / -LEVEL_FLOOR_DBFS, 0.0, 1.0)
        lo = edges[k] // VAD_WINDOW
        hi = max(lo + 1, -(-edges[k + 1] // VAD_WINDOW))  # every window that overlaps the step
        out[k, 1] = speech[lo:hi].mean() if lo < speech.size else 0.0
        out[k, 2] = spectral_flatness(piece) if level > LEVEL_FLOOR_DBFS and piece.size > 1 else 0.0
    return out
