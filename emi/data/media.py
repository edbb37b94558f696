"""Media I/O with PyAV: decoding audio tracks and frames on the step grid, probing facts about any clip, and
writing generated clips."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emi.utils import atomic_path

AUDIO_SAMPLE_RATE = 16_000  # every audio encoder here (whisper, wav2vec2) expects 16 kHz mono
AUDIO_CHUNK = 1024  # samples per AAC frame


class MediaError(RuntimeError):
    """A clip that cannot be opened or decoded; the message starts with its path."""


CANCELLED_DOWNMIX_DB = 12.0
"""A several-channel track whose mono downmix is this much quieter than its loudest channel is read from that channel:
its channels cancel when summed (a stereo microphone wired in opposite phase made the downmix silent, and the clip's
audio and text were masked as silence). Ordinary tracks lose 0 dB (the same sound in both channels), ~3 dB
(unrelated sounds) or 6 dB (one channel silent), and keep FFmpeg's downmix."""


def decode_audio(path: Path, sample_rate: int = AUDIO_SAMPLE_RATE,
                 origin: float | None = None) -> np.ndarray | None:
    """The first audio stream of ``path`` as mono float32 at ``sample_rate``; None if it has no audio stream.

    ``origin``: the time (s, on the container's timeline) that sample 0 stands for, e.g. the video stream's start:
    a track that starts later (a browser or phone recording often starts its audio a few hundred ms after the
    video) gets that much silence before its first sample, one that starts earlier loses what precedes ``origin``,
    so that the audio under a step is what played while that step's frame was shown. None: from the track's first
    sample, whenever that was."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    chunks: list[np.ndarray] = []
    channels: list[np.ndarray] = []  # each channel on its own, for a track of several (see CANCELLED_DOWNMIX_DB)
    first: float | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            split = av.AudioResampler(format="fltp", rate=sample_rate) if stream.channels > 1 else None  # its layout
            for frame in container.decode(stream):
                if first is None and frame.time is not None:
                    first = float(frame.time)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                for out in split.resample(frame) if split is not None else ():
                    channels.append(out.to_ndarray())
            for out in resampler.resample(None):  # flush the resampler's tail
                chunks.append(out.to_ndarray().reshape(-1))
            for out in split.resample(None) if split is not None else ():
                channels.append(out.to_ndarray())
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"{path}: cannot decode audio: {type(exc).__name__}: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    wave = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    if channels:
        wave = _uncancelled(wave, np.concatenate(channels, axis=1))
    shift = int(round(((first or 0.0) - origin) * sample_rate)) if origin is not None else 0
    if shift > 0:
        return np.concatenate([np.zeros(shift, np.float32), wave])
    return wave[-shift:] if shift < 0 else wave


def _uncancelled(mono: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """``mono`` (FFmpeg's downmix), or the loudest channel of ``channels`` (C, N) where the downmix lost more than
    ``CANCELLED_DOWNMIX_DB`` against it: channels in opposite phase cancel when summed."""
    levels = [rms_dbfs(c) for c in channels]
    loudest = int(np.argmax(levels))
    if rms_dbfs(mono) >= levels[loudest] - CANCELLED_DOWNMIX_DB:
        return mono
    return np.ascontiguousarray(channels[loudest][: mono.size] if channels.shape[1] >= mono.size else
                                np.pad(channels[loudest], (0, mono.size - channels.shape[1])), dtype=np.float32)


def rms_dbfs(wave: np.ndarray | None) -> float:
    """Root-mean-square level in dB relative to full scale; -inf for an empty or all-zero signal."""
    if wave is None or wave.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")


def grid_steps(duration_s: float, fps: float) -> int:
    """Steps of the 1/fps grid that fit in the clip: a 4.0 s clip at 5 fps has 20."""
    return int(math.floor(duration_s * fps + 1e-6))


def video_duration(container: av.container.InputContainer) -> float:
    """From the stream's or the container's timestamps, never from the nominal frame rate (some containers report
    1000 fps)."""
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    raise MediaError("video stream has no duration")


def step_times(n_grid: int, fps: float, max_steps: int) -> np.ndarray:
    """Indices of the grid steps to featurize: every step, or ``max_steps`` of them spread uniformly over a longer
    clip (the middle step of each of ``max_steps`` equal parts)."""
    if n_grid <= max_steps:
        return np.arange(n_grid)
    return np.floor((np.arange(max_steps) + 0.5) * n_grid / max_steps).astype(int)


def stream_start(stream) -> float:
    """When a stream starts on its container's timeline (s): a video stream may start after 0 (shifted past an
    audio track's priming samples when remuxed, or by an encoder's B-frame delay)."""
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def sample_frames(container, centres: np.ndarray, max_side: int) -> list[np.ndarray]:
    """The decoded frame nearest to each time in ``centres`` (seconds from the video stream's start, ascending),
    downscaled to ``max_side``. Frames are placed by their presentation timestamps, never by the container's
    nominal rate."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    sar = pixel_aspect(stream)
    centres = np.asarray(centres) + stream_start(stream)
    n_steps = len(centres)
    picked: list[np.ndarray] = []
    previous = None
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        while len(picked) < n_steps and frame.time >= centres[len(picked)]:
            k = len(picked)
            use = frame
            # nearest frame; a tie (25 fps on a 5 fps grid ties at every step) goes to the earlier frame, the one on
            # screen at the centre, decided in whole microseconds so that float noise never picks the frame
            if previous is not None and (round((centres[k] - previous.time) * 1e6)
                                         <= round((frame.time - centres[k]) * 1e6)):
                use = previous
            picked.append(_to_rgb(use, max_side, sar))
        if len(picked) == n_steps:
            break
        previous = frame
    if previous is not None:
        while len(picked) < n_steps:  # the last frames' timestamps end before the last centre
            picked.append(_to_rgb(previous, max_side, sar))
    if not picked:
        raise MediaError("video stream has no decodable frame")
    return picked


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_sequence(folder: Path) -> list[Path]:
    """The images of a frame folder in frame order (numeric stems by number); other files (``Thumbs.db``) skipped."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")] if Path(folder).is_dir() else []
    return sorted(files, key=lambda p: (0, int(p.stem), p.name) if p.stem.isdigit() else (1, 0, p.name))


def sample_images(images: list[Path], centres: np.ndarray, duration_s: float, max_side: int) -> list[np.ndarray]:
    """For each time in ``centres``, the image of a sequence spread evenly over ``duration_s`` that covers it
    (image k stands for [k, k + 1) * duration / n), as RGB downscaled to ``max_side``."""
    import cv2

    n = len(images)
    picks = np.clip(np.floor(np.asarray(centres) / duration_s * n).astype(int), 0, n - 1)
    loaded: dict[int, np.ndarray] = {}
    out = []
    for k in picks:
        if k not in loaded:
            bgr = cv2.imread(str(images[k]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise MediaError(f"{images[k]}: not a readable image")
            h, w = bgr.shape[:2]
            size = _scaled_size(w, h, max_side)
            if size != (w, h):
                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            loaded[k] = np.ascontiguousarray(bgr[..., ::-1])
        out.append(loaded[k])
    return out


def pixel_aspect(stream) -> float:
    """The width of one stored pixel over its height as a player shows it (the sample aspect ratio): 1 for square
    pixels and when the file does not say; anamorphic recordings (DV, HDV's 1440x1080, some phone and screen
    encoders) store fewer columns than they show."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return float(sar) if sar and sar > 0 else 1.0


def _to_rgb(frame: av.VideoFrame, max_side: int, sar: float = 1.0) -> np.ndarray:
    """The frame as RGB downscaled to ``max_side``, shaped and turned the way a player shows it. Non-square pixels
    (``sar``, see ``pixel_aspect``) are stretched to square ones, or faces reach the encoders squashed; a phone's
    portrait recording stores landscape pixels and a display matrix (``frame.rotation``: the counterclockwise turn,
    in degrees, that shows the frame upright), and the face would otherwise reach the encoders lying on its side."""
    shown = max(2, round(frame.width * sar)) if abs(sar - 1.0) > 1e-3 else frame.width
    width, height = _scaled_size(shown, frame.height, max_side)
    if (width, height) == (frame.width, frame.height):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
    turns = round((frame.rotation or 0) / 90) % 4  # np.rot90 turns counterclockwise, as the matrix does
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


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


@dataclass
class _Demuxed:
    """What one pass over every packet of a container found."""

    video_packets: int = 0  # video packets holding data
    video_end: float = 0.0  # end time (s) of the last video packet
    end: float | None = None  # end time (s) of the last packet of any stream

    def short_of_declared_end(self, container, video) -> str:
        """Why the packets look cut short ('' when they do not). A video stream with a frame count (MP4, AVI) must
        hold that many packets, or reach the end the stream declares (an AVI's count also counts the empty chunks
        a muxer writes for frames it dropped, an MPEG-4 encoder's B-frame delay). Without a count (Matroska, WebM),
        the last packet of any stream must reach the container's declared duration (a track that outlasts the
        video reaches it all the same; a live recording that declares none is not checked). One frame (at least
        0.1 s) of slack either way."""
        slack = max(1.0 / float(video.average_rate) if video.average_rate else 0.0, 0.1)
        if video.frames and self.video_packets < video.frames:
            declared = float(video.duration * video.time_base) if video.duration is not None else None
            if declared is None or self.video_end - stream_start(video) < declared - slack:
                return f"{self.video_packets} of {video.frames} video frames present"
        if not video.frames and container.duration and self.end is not None:
            start = container.start_time / av.time_base if container.start_time is not None else 0.0
            declared = container.duration / av.time_base
            if self.end - start < declared - slack:
                return f"the packets end at {self.end - start:.2f} s of the {declared:.2f} s the file declares"
        return ""


def _demux_all(container, video) -> _Demuxed:
    out = _Demuxed()
    for packet in container.demux():
        if packet.size == 0:  # the demuxer's closing empty packet of each stream
            continue
        end = (float((packet.pts + (packet.duration or 0)) * packet.time_base)
               if packet.pts is not None and packet.time_base is not None else None)
        if packet.stream.index == video.index:
            out.video_packets += 1
            if end is not None:
                out.video_end = max(out.video_end, end)
        if end is not None:
            out.end = end if out.end is None else max(out.end, end)
    return out


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
        # the demux pass opens the file again: a Matroska file without its index (cut short) cannot seek back
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            passed = _demux_all(container, video)
            info.n_frames = passed.video_packets
            if info.duration_s is None and passed.video_end:
                info.duration_s = passed.video_end
            short = passed.short_of_declared_end(container, video)
            if short:
                info.error = f"truncated: {short}"
                return info
            info.readable = True
    except (av.error.FFmpegError, OSError, StopIteration, ValueError) as exc:
        info.error = f"{type(exc).__name__}: {exc}"
    return info
