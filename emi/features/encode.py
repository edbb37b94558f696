"""The encoders over decoded clips: frames batched across clips, audio in fixed windows pooled onto the grid."""

from __future__ import annotations

import math

import numpy as np

from emi.data.media import AUDIO_SAMPLE_RATE
from emi.features.decode import Decoded


def encode_frames(encoder, decoded: list[Decoded], batch_size: int) -> list[np.ndarray]:
    """Batches frames across clips (same-size frames only, as real datasets mix resolutions)."""
    out: list[list[np.ndarray]] = [[] for _ in decoded]
    batch: list[np.ndarray] = []
    owners: list[int] = []

    def flush():
        if batch:
            feats = encoder.encode(np.stack(batch))
            for owner, row in zip(owners, feats):
                out[owner].append(row)
            batch.clear()
            owners.clear()

    for i, d in enumerate(decoded):
        for frame in d.frames:
            if batch and (len(batch) == batch_size or frame.shape != batch[0].shape):
                flush()
            batch.append(frame)
            owners.append(i)
    flush()
    return [np.stack(rows).astype(np.float32) if rows else np.zeros((0, encoder.dim), np.float32) for rows in out]


def encode_audio(encoder, waves: list[np.ndarray | None], n_steps: list[int], fps: float,
                 window_s: float | None, batch_size: int) -> list[np.ndarray]:
    """Hidden states of fixed-length windows (so a clip's features do not depend on its batch-mates),
    then the mean of the states inside each 1/fps step: the paper's windows aligned with video frames."""
    max_window = getattr(encoder, "max_samples", None)
    windows, owners, valid = [], [], []
    for i, wave in enumerate(waves):
        if wave is None:
            continue
        win = int(round((window_s or wave.size / AUDIO_SAMPLE_RATE) * AUDIO_SAMPLE_RATE))
        if max_window:
            win = min(win, max_window)
        for start in range(0, wave.size, win):
            piece = wave[start:start + win]
            windows.append(np.pad(piece, (0, win - piece.size)).astype(np.float32))
            owners.append(i)
            valid.append(piece.size)
    states: list[list[np.ndarray]] = [[] for _ in waves]
    order = sorted(range(len(windows)), key=lambda j: windows[j].size)  # equal lengths batch together
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        by_len: dict[int, list[int]] = {}
        for j in group:
            by_len.setdefault(windows[j].size, []).append(j)
        for js in by_len.values():
            hidden = encoder.encode(np.stack([windows[j] for j in js]))
            for j, h in zip(js, hidden):
                n = min(h.shape[0], math.ceil(valid[j] / AUDIO_SAMPLE_RATE * encoder.frame_rate))
                states[owners[j]].append((j, h[:n]))
    pooled = []
    for i, wave in enumerate(waves):
        if wave is None:
            pooled.append(np.zeros((n_steps[i], encoder.dim), np.float32))
            continue
        seq = np.concatenate([h for _, h in sorted(states[i], key=lambda x: x[0])])
        pooled.append(pool_to_grid(seq, encoder.frame_rate, fps, n_steps[i]))
    return pooled


def pool_to_grid(states: np.ndarray, rate: float, fps: float, n_steps: int) -> np.ndarray:
    """Mean of the hidden states whose time falls in [k/fps, (k+1)/fps) for each step k."""
    edges = np.floor(np.arange(n_steps + 1) * rate / fps).astype(int)
    out = np.empty((n_steps, states.shape[1]), np.float32)
    for k in range(n_steps):
        lo = min(edges[k], states.shape[0] - 1)
        hi = max(min(edges[k + 1], states.shape[0]), lo + 1)
        out[k] = states[lo:hi].mean(0)
    return out


