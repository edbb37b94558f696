"""Video/audio container I/O with PyAV: writing generated clips and probing facts about any clip."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emi.utils import atomic_path

AUDIO_CHUNK = 1024  # samples per AAC frame


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: int, audio: np.ndarray | None,
              sample_rate: int, qscale: int = 4) -> None:
    """MPEG-4 video (+ mono AAC audio when ``audio`` is given), written atomically."""
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            vstream = None
            astream = None
            if audio is not None:
                astream = container.add_stream("aac", rate=sample_rate, layout="mono")
            for i, frame in enumerate(frames):
                if vstream is None:
                    # FFmpeg's own MPEG-4 Part 2 encoder, single-threaded: libx264 gave different bytes for
                    # the same frames from run to run, and a generated dataset must be bit-reproducible
                    vstream = container.add_stream("mpeg4", rate=fps)
                    vstream.height, vstream.width = frame.shape[:2]
                    vstream.pix_fmt = "yuv420p"
                    vstream.codec_context.thread_count = 1
                    vstream.codec_context.thread_type = "NONE"
                    vstream.options = {"qscale": str(qscale)}
                # our own colour conversion: FFmpeg's threaded swscale path is not bit-reproducible under load
                vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
                vf.pts = i
                container.mux(vstream.encode(vf))
            if vstream is not None:
                container.mux(vstream.encode())
            if astream is not None:
                pcm = np.clip(audio, -1, 1).astype(np.float32)
                for start in range(0, pcm.size, AUDIO_CHUNK):
                    chunk = pcm[start:start + AUDIO_CHUNK][None, :]
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                    af.sample_rate = sample_rate
                    af.pts = start
                    af.time_base = Fraction(1, sample_rate)
                    container.mux(astream.encode(af))
                container.mux(astream.encode())


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB -> planar YUV 4:2:0 (BT.601, limited range) as PyAV's (H·3/2)×W layout."""
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h} must be even for 4:2:0 video")
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    v = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    planes = np.concatenate([y, u.reshape(-1, w), v.reshape(-1, w)])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8)


@dataclass
class MediaInfo:
    """What a clip contains, as far as its container and first decoded frame tell."""

    path: str
    exists: bool
    readable: bool
    error: str | None = None
    has_video: bool = False
    has_audio: bool = False
    duration_s: float | None = None
    fps: float | None = None
    n_frames: int | None = None
    width: int | None = None
    height: int | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    size_bytes: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def probe(path: Path) -> MediaInfo:
    """Open the container, decode its first video frame and demux every packet.

    Demuxing the whole file (without decoding it) is what catches truncated or damaged clips
    at a fraction of the cost of a full decode.
    """
    path = Path(path)
    if not path.is_file():
        return MediaInfo(str(path), exists=False, readable=False, error="file not found")
    info = MediaInfo(str(path), exists=True, readable=False, size_bytes=path.stat().st_size)
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            info.has_video, info.has_audio = video is not None, audio is not None
            if container.duration is not None:
                info.duration_s = container.duration / av.time_base
            if audio is not None:
                info.audio_sample_rate = audio.codec_context.sample_rate
                info.audio_channels = audio.codec_context.channels
            if video is None:
                info.error = "no video stream"
                return info
            info.width, info.height = video.codec_context.width, video.codec_context.height
            if video.average_rate:
                info.fps = float(video.average_rate)
            first = next(container.decode(video), None)
            if first is None:
                info.error = "video stream has no decodable frame"
                return info
            container.seek(0)
            n_packets = 0
            last_end = 0.0
            for packet in container.demux(video):
                if packet.size == 0:
                    continue
                n_packets += 1
                if packet.pts is not None and packet.duration is not None:
                    last_end = max(last_end, float((packet.pts + packet.duration) * packet.time_base))
            info.n_frames = n_packets
            if info.duration_s is None and last_end:
                info.duration_s = last_end
            if video.frames and n_packets < video.frames:
                info.error = f"truncated: {n_packets} of {video.frames} video frames present"
                return info
            info.readable = True
    except (av.error.FFmpegError, OSError, StopIteration, ValueError) as exc:
        info.error = f"{type(exc).__name__}: {exc}"
    return info
