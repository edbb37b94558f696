"""Clips onto the feature grid: the frame nearest each step centre (k + 0.5) / fps, downscaled to
``extract.frame_max_side``, with square pixels and turned upright; 16 kHz mono audio from the video's start, cut or
padded to the grid's length; and the face crop.

``DECODE_VERSION`` names what this makes of a clip: extract's receipts and the kept decodes carry it, so a change
here that alters the frames or waveforms of some clip recomputes their features instead of reusing stale ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from emi.config import DataParams, ExtractParams
from emi.data.dataset import Clip, face_image_dir
from emi.data.media import (AUDIO_SAMPLE_RATE, MediaError, decode_audio, grid_steps, image_sequence, rms_dbfs,
                            sample_frames, sample_images, step_times, stream_start, video_duration)

DECODE_VERSION = 4
"""Bump when ``decode_clip`` makes different frames or waveforms of the same clip and settings (2: frames turned by
the stream's display matrix, audio aligned to the video stream's start; 3: non-square pixels stretched to square;
4: a track whose channels cancel in the downmix read from its loudest channel)."""

OK = "ok"
"""A modality's status when it is usable; anything else masks it for that clip."""


@dataclass
class Decoded:
    """One clip on the 5 fps grid: frames at step centres, 16 kHz audio cut/padded to the grid's length."""

    clip: Clip
    n_steps: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    wave: np.ndarray | None = None
    visual_status: str = OK
    audio_status: str = OK
    detail: str = ""
    face_found: list[bool] | None = None  # per frame, once the face cropper ran


def decode_clip(clip: Clip, cfg: ExtractParams, data: DataParams, want_frames: bool, want_audio: bool) -> Decoded:
    """A clip with more than ``extract.max_steps`` grid steps is featurized on that many steps spread uniformly over
    it (frames and audio alike; ``detail`` says so); an unreadable clip gets status ``error`` with the reason, never
    an exception."""
    out = Decoded(clip)
    try:
        with av.open(str(clip.path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            duration = video_duration(container)
            n_grid = grid_steps(duration, cfg.fps)
            if n_grid == 0:
                raise MediaError(f"shorter than one {1 / cfg.fps:.2f} s step at {cfg.fps:g} fps")
            steps = step_times(n_grid, cfg.fps, cfg.max_steps)
            out.n_steps = len(steps)
            if out.n_steps < n_grid:
                out.detail = (f"{duration:.0f} s clip: featurized on {out.n_steps} of its {n_grid} steps "
                              f"(extract.max_steps), spread uniformly over it")
            centres = (steps + 0.5) / cfg.fps
            # the grid starts with the video stream (sample_frames places frames from there): so does the audio
            origin = stream_start(container.streams.video[0])
            if want_frames and cfg.visual_source == "frames":
                out.frames = sample_frames(container, centres, cfg.frame_max_side)
        if want_frames and cfg.visual_source == "face_images":
            images = image_sequence(face_image_dir(clip))
            if images:
                out.frames = sample_images(images, centres, duration, cfg.frame_max_side)
            else:
                out.visual_status = "no_face_images"
        if want_audio:
            wave = decode_audio(clip.path, AUDIO_SAMPLE_RATE, origin)
            if wave is None:
                out.audio_status = "no_audio"
            else:
                if rms_dbfs(wave) < data.silence_dbfs:
                    out.audio_status = "silent"
                out.wave = grid_audio(wave, steps, n_grid, cfg.fps)
    except (MediaError, av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        out.visual_status = out.audio_status = "error"
        out.detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MediaError) else str(exc)
        out.frames, out.wave, out.n_steps = [], None, 0
    return out


class KeptDecodes(Protocol):
    """Where decoded clips are kept (``emi.features.decoded.DecodedStore``)."""

    def load(self, clip: Clip) -> Decoded | None: ...

    def save(self, d: Decoded) -> bool: ...


def grid_audio(wave: np.ndarray, steps: np.ndarray, n_grid: int, fps: float) -> np.ndarray:
    """The waveform under the featurized steps: the whole grid's length (cut, or padded with silence where the audio
    ends early), or for a subsampled clip each chosen step's 1/fps slice, back to back."""
    if len(steps) == n_grid:
        n = int(round(n_grid / fps * AUDIO_SAMPLE_RATE))
        return np.pad(wave[:n], (0, max(0, n - wave.size)))
    step_len = int(round(AUDIO_SAMPLE_RATE / fps))
    out = np.zeros(len(steps) * step_len, np.float32)
    for j, k in enumerate(steps):
        piece = wave[int(round(k / fps * AUDIO_SAMPLE_RATE)):][:step_len]
        out[j * step_len:j * step_len + piece.size] = piece
    return out


def decode_clips(clips: list[Clip], cfg: ExtractParams, data: DataParams, want_frames: bool,
                 want_audio: bool, store: KeptDecodes | None = None) -> list[Decoded]:
    """``store`` (``emi.features.decoded``): a clip kept there is read instead of decoded; one decoded here with
    both its frames and its audio is kept there."""
    def one(clip: Clip) -> Decoded:
        if store is not None and (kept := store.load(clip)) is not None:
            return kept
        d = decode_clip(clip, cfg, data, want_frames, want_audio)
        if store is not None and want_frames and want_audio:
            store.save(d)
        return d

    if cfg.decode_workers <= 1:
        return [one(c) for c in clips]
    with ThreadPoolExecutor(cfg.decode_workers) as pool:  # PyAV releases the GIL while decoding
        return list(pool.map(one, clips))


class FaceCropper:
    """Largest face per frame from OpenCV's pretrained Haar cascade, grown by a margin; no face -> whole frame."""

    def __init__(self, margin: float):
        import cv2

        self.cv2 = cv2
        self.detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        self.margin = margin

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        grey = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY)
        faces = self.detector.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)
        if len(faces) == 0:
            return frame, False
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        side = int(max(w, h) * (1 + 2 * self.margin))
        cx, cy = x + w // 2, y + h // 2
        x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
        return frame[y0:y0 + side, x0:x0 + side], True

    def crop(self, decoded: Decoded) -> tuple[Decoded, bool | None]:
        """A copy with each frame cropped to its face; found is None without frames and False when no frame has
        a face (the visual modality is then masked for this clip and the frames stay whole)."""
        if not decoded.frames:
            return decoded, None
        crops = [self(f) for f in decoded.frames]
        found = [bool(f) for _, f in crops]
        if not any(found):
            return replace(decoded, face_found=found), False
        return replace(decoded, frames=[crop for crop, _ in crops], face_found=found), True


