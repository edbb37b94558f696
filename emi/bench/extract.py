"""`emi bench extract`: the batched visual extractor against a one-frame-at-a-time loop, same model and frames."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emi.config import Params
from emi.utils import peak_rss_mb
from emi.data.dataset import list_clips
from emi.encoders.base import resolve_device, resolve_dtype
from emi.encoders.visual import load_visual
from emi.features.decode import decode_clip
from emi.features.encode import encode_frames


@dataclass
class ExtractBench:
    clips: int
    frames: int
    batched_fps: float
    naive_fps: float
    ratio: float
    peak_rss_mb: float
    encoder: str

    def lines(self) -> list[str]:
        return [
            f"visual encoder : {self.encoder}",
            f"clips, frames  : {self.clips}, {self.frames} (5 fps grid, decoded once, same frames for both)",
            f"batched        : {self.batched_fps:8.1f} frames/s",
            f"one at a time  : {self.naive_fps:8.1f} frames/s",
            f"ratio          : {self.ratio:8.2f}x (median of paired runs)",
            f"peak RSS       : {self.peak_rss_mb:8.0f} MB",
        ]


def bench_extract(params: Params, raw_dir: Path, n_clips: int, repeats: int) -> ExtractBench:
    """The stage's batched visual path vs a naive loop that encodes one frame per call, same model and frames."""
    cfg = params.extract
    device = resolve_device(cfg.device)
    encoder = load_visual(cfg.visual, device, resolve_dtype(cfg.dtype, device))
    decoded = [decode_clip(c, cfg, params.data, True, False) for c in list_clips(Path(raw_dir))[:n_clips]]
    decoded = [d for d in decoded if d.frames]
    frames = [f for d in decoded for f in d.frames]
    encoder.encode(np.stack(frames[: cfg.batch_size]))  # warm-up (allocator, lazy init)

    def batched() -> float:
        start = time.perf_counter()
        encode_frames(encoder, decoded, cfg.batch_size)
        return len(frames) / (time.perf_counter() - start)

    def naive() -> float:
        start = time.perf_counter()
        for frame in frames:
            encoder.encode(frame[None])
        return len(frames) / (time.perf_counter() - start)

    # alternate the two so that a noisy neighbour slows both alike; the ratio is the median of paired ratios
    pairs = [(batched(), naive()) for _ in range(repeats)]
    fast = statistics.median(b for b, _ in pairs)
    slow = statistics.median(n for _, n in pairs)
    ratio = statistics.median(b / n for b, n in pairs)
    return ExtractBench(len(decoded), len(frames), fast, slow, ratio, peak_rss_mb(), encoder.resolved.describe())
