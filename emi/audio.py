"""Audio tracks as the encoders want them: mono float32 at 16 kHz, decoded with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from emi.encoders import AUDIO_SAMPLE_RATE


class MediaError(RuntimeError):
    """A clip that cannot be opened or decoded; the message starts with its path."""


def decode_audio(path: Path, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray | None:
    """The first audio stream of ``path`` as mono float32 at ``sample_rate``; None if it has no audio stream."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush the resampler's tail
                chunks.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"{path}: cannot decode audio: {type(exc).__name__}: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def rms_dbfs(wave: np.ndarray | None) -> float:
    """Root-mean-square level in dB relative to full scale; -inf for an empty or all-zero signal."""
    if wave is None or wave.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")
