"""The one path from a clip to encoder features: decode -> 5 fps grid -> (damage) -> face crop -> encode.

``emi extract``, ``emi predict`` (and the registered MLflow model), evaluate's robustness pass and Stage I's
re-encoding after fine-tuning all call ``Featurizer``, so a clip gets the same numbers wherever it is encoded.

- frames: the decoded frame nearest to each step centre (k + 0.5) / fps, downscaled to ``extract.frame_max_side``;
- audio: 16 kHz mono, cut or padded with silence to the grid's length, encoded in fixed windows and pooled onto
  the grid (the mean of the hidden states inside each step);
- text: one transcript per encoder call (a clip's vector never depends on its batch-mates);
- damage (robustness, augmentation): an occlusion box over the frame, white noise at an SNR, or a dropped
  modality, applied before the face crop;
- statuses per modality (``ok`` is usable; anything else masks the modality for that clip);
- reliability cues per step for visual and audio (``emi.cues``): what the quality scorer sees of a damaged signal.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np

from emi.config import DataParams, ExtractParams, MODALITIES
from emi.cues import audio_cues, visual_cues
from emi.data.dataset import Clip, face_image_dir
from emi.data.media import (AUDIO_SAMPLE_RATE, MediaError, decode_audio, grid_steps, image_sequence, rms_dbfs,
                            sample_frames, sample_images, step_times, video_duration)

OK = "ok"


# ----------------------------------------------------------------------------- decode
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
            if want_frames and cfg.visual_source == "frames":
                out.frames = sample_frames(container, centres, cfg.frame_max_side)
        if want_frames and cfg.visual_source == "face_images":
            images = image_sequence(face_image_dir(clip))
            if images:
                out.frames = sample_images(images, centres, duration, cfg.frame_max_side)
            else:
                out.visual_status = "no_face_images"
        if want_audio:
            wave = decode_audio(clip.path, AUDIO_SAMPLE_RATE)
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
                 want_audio: bool) -> list[Decoded]:
    def one(clip: Clip) -> Decoded:
        return decode_clip(clip, cfg, data, want_frames, want_audio)

    if cfg.decode_workers <= 1:
        return [one(c) for c in clips]
    with ThreadPoolExecutor(cfg.decode_workers) as pool:  # PyAV releases the GIL while decoding
        return list(pool.map(one, clips))


# ----------------------------------------------------------------------------- face crop
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


# ----------------------------------------------------------------------------- damage
@dataclass(frozen=True)
class Damage:
    """What to break in every clip it is applied to (robustness conditions, augmentation)."""

    occlusion_box: tuple[float, float, float, float] | None = None  # fractions x0, y0, x1, y1 of the frame
    noise_snr_db: float | None = None
    drop_audio: bool = False
    drop_text: bool = False

    def touched(self) -> set[str]:
        """The modalities whose features this damage changes."""
        out = set()
        if self.occlusion_box is not None:
            out.add("visual")
        if self.noise_snr_db is not None or self.drop_audio:
            out.add("audio")
        if self.drop_text:
            out.add("text")
        return out


def damage_clip(d: Decoded, damage: Damage, rng: np.random.Generator) -> Decoded:
    """A damaged copy of ``d`` (the decoded clip itself is left as it was)."""
    d = replace(d)
    if damage.occlusion_box is not None:
        x0, y0, x1, y1 = damage.occlusion_box
        frames = []
        for f in d.frames:
            h, w = f.shape[:2]
            f = f.copy()
            f[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = 0  # an opaque object over the face
            frames.append(f)
        d.frames = frames
    if damage.noise_snr_db is not None and d.wave is not None:
        power = float(np.mean(d.wave.astype(np.float64) ** 2)) or 1e-8
        noise = rng.normal(0, np.sqrt(power / 10 ** (damage.noise_snr_db / 10)), d.wave.shape)
        d.wave = (d.wave + noise).astype(np.float32)
    if damage.drop_audio:
        d.wave, d.audio_status = None, "dropped"
    return d


# ----------------------------------------------------------------------------- encode
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


def usable_wave(d: Decoded) -> np.ndarray | None:
    """The waveform the audio encoder sees: a silent track is still encoded (and masked), a missing one is not."""
    return d.wave if d.audio_status in (OK, "silent") else None


def text_status(clip_id: str, texts: dict[str, str | None]) -> str:
    return OK if texts.get(clip_id) else ("missing" if clip_id not in texts else "empty")


# ----------------------------------------------------------------------------- the path
@dataclass
class Features:
    """Encoder features of a list of clips, for the modalities asked for (others are None), with each
    modality's status per clip (``ok`` = usable), why a clip could not be decoded and, for the visual and audio
    modalities asked for, the reliability cues per clip (``emi.cues``: one row per feature row)."""

    ids: list[str]
    visual: list[np.ndarray] | None
    audio: list[np.ndarray] | None
    text: np.ndarray | None
    status: dict[str, list[str]]
    detail: list[str]
    cues: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def mask(self) -> np.ndarray:
        """(N, 3) bool, V A T: the modality is usable for the clip."""
        return np.array([[s == OK for s in self.status[m]] for m in MODALITIES], bool).T.reshape(len(self.ids), 3)

    def notes(self) -> list[str]:
        """Per clip, which modalities are unusable and why (empty when all are usable)."""
        out = []
        for i in range(len(self.ids)):
            bad = [f"{m} ({self.status[m][i]})" for m in MODALITIES if self.status[m][i] != OK]
            out.append("" if not bad else "no usable " + ", ".join(bad))
        return out


class Featurizer:
    """Decode, damage, crop and encode clips with one set of (optionally fine-tuned) encoders."""

    def __init__(self, cfg: ExtractParams, data: DataParams, encoders: dict):
        self.cfg, self.data, self.encoders = cfg, data, encoders
        self.cropper = FaceCropper(cfg.face_margin) if cfg.face_crop else None

    def decode(self, clips: list[Clip], modalities: set[str] | tuple[str, ...]) -> list[Decoded]:
        want_v, want_a = "visual" in modalities, "audio" in modalities
        if not (want_v or want_a):
            return [Decoded(c) for c in clips]  # text needs no decoding
        return decode_clips(clips, self.cfg, self.data, want_v, want_a)

    def cropped(self, decoded: list[Decoded]) -> tuple[list[Decoded], list[bool | None]]:
        """The frames the visual encoder sees (faces cropped when ``extract.face_crop``), and whether a face was
        found per clip (None without cropping or without frames)."""
        if self.cropper is None:
            return decoded, [None] * len(decoded)
        pairs = [self.cropper.crop(d) for d in decoded]
        return [d for d, _ in pairs], [found for _, found in pairs]

    def encode(self, decoded: list[Decoded], texts: dict[str, str | None], modalities: set[str] | tuple[str, ...],
               damage: Damage | None = None, rng: np.random.Generator | None = None) -> Features:
        """Features of decoded clips for ``modalities``; ``damage`` is applied to every clip (in order, drawing
        from ``rng``) before the face crop."""
        cfg = self.cfg
        if damage is not None:
            rng = rng if rng is not None else np.random.default_rng(0)
            decoded = [damage_clip(d, damage, rng) for d in decoded]
        ids = [d.clip.id for d in decoded]
        status: dict[str, list[str]] = {}
        cues: dict[str, list[np.ndarray]] = {}
        visual = audio = text = None
        if "visual" in modalities:
            frames, found = self.cropped(decoded)
            visual = encode_frames(self.encoders["visual"], frames, cfg.batch_size)
            status["visual"] = [d.visual_status if f is not False else "no_face" for d, f in zip(decoded, found)]
            cues["visual"] = [visual_cues(d.frames, d.face_found, x, self.encoders["visual"])
                              for d, x in zip(frames, visual)]
        if "audio" in modalities:
            waves = [usable_wave(d) for d in decoded]
            audio = encode_audio(self.encoders["audio"], waves, [d.n_steps for d in decoded], cfg.fps,
                                 cfg.audio.window_s, cfg.batch_size)
            status["audio"] = [d.audio_status for d in decoded]
            cues["audio"] = [audio_cues(w, x.shape[0], cfg.fps) for w, x in zip(waves, audio)]
        if "text" in modalities:
            dropped = damage is not None and damage.drop_text
            text = np.zeros((len(decoded), cfg.text.dim), np.float32)
            status["text"] = ["dropped" if dropped else text_status(i, texts) for i in ids]
            for k, clip_id in enumerate(ids):
                if status["text"][k] == OK:
                    # one transcript per call: padding to a batch-mate's length moves the mean-pooled vector in
                    # the 7th digit, and a clip's features must not depend on which clips it is encoded with
                    text[k] = self.encoders["text"].encode([texts[clip_id]])[0]
        return Features(ids, visual, audio, text, status, [d.detail for d in decoded], cues)

    def __call__(self, clips: list[Clip], texts: dict[str, str | None],
                 modalities: set[str] | tuple[str, ...] = MODALITIES, damage: Damage | None = None,
                 rng: np.random.Generator | None = None) -> Features:
        return self.encode(self.decode(clips, modalities), texts, modalities, damage, rng)
