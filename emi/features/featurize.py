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
- reliability cues per step for visual and audio (``emi.features.cues``): what the quality scorer sees of a damaged signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emi.config import DataParams, ExtractParams, MODALITIES
from emi.data.dataset import Clip
from emi.features.cues import audio_cues, visual_cues
from emi.features.damage import Damage, damage_clip
from emi.features.decode import OK, Decoded, FaceCropper, decode_clips
from emi.features.decoded import DecodedStore
from emi.features.encode import encode_audio, encode_frames


def usable_wave(d: Decoded) -> np.ndarray | None:
    """The waveform the audio encoder sees: a silent track is still encoded (and masked), a missing one is not."""
    return d.wave if d.audio_status in (OK, "silent") else None


def text_status(clip_id: str, texts: dict[str, str | None],
                text_vectors: dict[str, np.ndarray | None] | None = None) -> str:
    if text_vectors is not None:  # what extract stored: a vector, or None where the clip had no usable text
        return OK if text_vectors.get(clip_id) is not None else "missing"
    return OK if texts.get(clip_id) else ("missing" if clip_id not in texts else "empty")


# ----------------------------------------------------------------------------- the path
@dataclass
class Features:
    """Encoder features of a list of clips, for the modalities asked for (others are None), with each
    modality's status per clip (``ok`` = usable), why a clip could not be decoded and, for the visual and audio
    modalities asked for, the reliability cues per clip (``emi.features.cues``: one row per feature row)."""

    ids: list[str]
    visual: list[np.ndarray] | None
    audio: list[np.ndarray] | None
    text: np.ndarray | None
    status: dict[str, list[str]]
    detail: list[str]
    cues: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: list[Features], ids: list[str]) -> Features:
        """The features of several calls one after another, under ``ids`` (e.g. damaged copies of the clips)."""
        def joined(m: str) -> list | None:
            return None if getattr(parts[0], m) is None else [x for p in parts for x in getattr(p, m)]

        text = None if parts[0].text is None else np.concatenate([p.text for p in parts])
        return cls(list(ids), joined("visual"), joined("audio"), text,
                   {m: [s for p in parts for s in p.status[m]] for m in parts[0].status},
                   [d for p in parts for d in p.detail], {m: [c for p in parts for c in p.cues[m]]
                                                          for m in parts[0].cues})

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

    def __init__(self, cfg: ExtractParams, data: DataParams, encoders: dict, store: DecodedStore | None = None):
        self.cfg, self.data, self.encoders, self.store = cfg, data, encoders, store
        self.cropper = FaceCropper(cfg.face_margin) if cfg.face_crop else None

    def decode(self, clips: list[Clip], modalities: set[str] | tuple[str, ...]) -> list[Decoded]:
        """Decoded clips for ``modalities``: read from ``store`` where kept there, else decoded (and kept)."""
        want_v, want_a = "visual" in modalities, "audio" in modalities
        if not (want_v or want_a):
            return [Decoded(c) for c in clips]  # text needs no decoding
        return decode_clips(clips, self.cfg, self.data, want_v, want_a, self.store)

    def cropped(self, decoded: list[Decoded]) -> tuple[list[Decoded], list[bool | None]]:
        """The frames the visual encoder sees (faces cropped when ``extract.face_crop``), and whether a face was
        found per clip (None without cropping or without frames)."""
        if self.cropper is None:
            return decoded, [None] * len(decoded)
        pairs = [self.cropper.crop(d) for d in decoded]
        return [d for d, _ in pairs], [found for _, found in pairs]

    def encode(self, decoded: list[Decoded], texts: dict[str, str | None], modalities: set[str] | tuple[str, ...],
               damage: Damage | None = None, rng: np.random.Generator | None = None,
               text_vectors: dict[str, np.ndarray | None] | None = None) -> Features:
        """Features of decoded clips for ``modalities``; ``damage`` is applied to every clip (in order, drawing
        from ``rng``) before the face crop. ``text_vectors`` (clip id -> the text vector extract stored, None where
        the clip had no usable text) stands in for encoding ``texts``: a transcript is encoded once, by extract, and
        the stages that decode clips again reuse its vector (no text encoder needed)."""
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
            status["text"] = ["dropped" if dropped else text_status(i, texts, text_vectors) for i in ids]
            for k, clip_id in enumerate(ids):
                if status["text"][k] == OK and text_vectors is not None:
                    text[k] = text_vectors[clip_id]
                elif status["text"][k] == OK:
                    # one transcript per call: padding to a batch-mate's length moves the mean-pooled vector in
                    # the 7th digit, and a clip's features must not depend on which clips it is encoded with
                    text[k] = self.encoders["text"].encode([texts[clip_id]])[0]
        return Features(ids, visual, audio, text, status, [d.detail for d in decoded], cues)

    def __call__(self, clips: list[Clip], texts: dict[str, str | None],
                 modalities: set[str] | tuple[str, ...] = MODALITIES, damage: Damage | None = None,
                 rng: np.random.Generator | None = None,
                 text_vectors: dict[str, np.ndarray | None] | None = None) -> Features:
        return self.encode(self.decode(clips, modalities), texts, modalities, damage, rng, text_vectors)
