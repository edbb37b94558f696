"""Clips decoded once (``extract.keep_decoded``): the 5 fps grid's frames and the grid's waveform of the clips
`emi extract` decodes in the splits named there, kept on disk so that Stage I's fine-tuning and evaluate's robustness conditions read them
instead of decoding the videos again (the second decode of every clip per epoch was most of Stage I's time).

One file per clip, ``<root>/<key[:2]>/<key>.npz``: the frames as lossless PNG (the same pixels back, so every path
gets the numbers a fresh decode gives) and the waveform as float32. The key fingerprints exactly what
``emi.features.decode.decode_clip`` makes of the clip: the clip's bytes (sha256), the grid (fps, max steps), the
frame size, the visual source (and its face images), the silence threshold and ``DECODE_VERSION``. A changed clip
or setting therefore misses and is decoded again; a stale file is never read. The folder is a cache outside every
DVC output (``emi.paths.decoded_dir``): deleting it costs one decode per clip, never a wrong number.

Disk: a frame is stored at ``extract.frame_max_side`` (PNG, lossless), the waveform at 64 kB per second; figures
per clip-second are in docs/gpu.md.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emi.config import DataParams, ExtractParams
from emi.data.dataset import Clip, face_image_dir
from emi.data.media import image_sequence
from emi.features.decode import DECODE_VERSION, Decoded
from emi.utils import atomic_path, fingerprint, sha256_file

log = logging.getLogger(__name__)

PNG_LEVEL = 1  # zlib level of the stored frames: lossless at any level; 1 writes fastest


def decode_settings(cfg: ExtractParams, data: DataParams) -> dict:
    """The settings ``decode_clip``'s output depends on."""
    return {"fps": cfg.fps, "max_steps": cfg.max_steps, "frame_max_side": cfg.frame_max_side,
            "visual_source": cfg.visual_source, "silence_dbfs": data.silence_dbfs, "version": DECODE_VERSION}


@dataclass
class DecodedStore:
    """Decoded clips on disk under ``root``. ``hashes`` (clip id -> sha256 of its file) is filled on first use of
    a clip, or for many clips at once by ``hashed`` (a loader worker gets them with the store)."""

    root: Path
    cfg: ExtractParams
    data: DataParams
    hashes: dict[str, str] = field(default_factory=dict)
    keep: frozenset[str] | None = None  # the splits whose clips ``save`` keeps (None: every split)

    def hashed(self, clips: list[Clip]) -> DecodedStore:
        for c in clips:
            self._hash(c)
        return self

    def _hash(self, clip: Clip) -> str:
        if clip.id not in self.hashes:
            self.hashes[clip.id] = sha256_file(clip.path) if clip.path.is_file() else "missing"
        return self.hashes[clip.id]

    def key(self, clip: Clip) -> str:
        images = ([(p.name, p.stat().st_size) for p in image_sequence(face_image_dir(clip))]
                  if self.cfg.visual_source == "face_images" else None)
        return fingerprint({"clip": self._hash(clip), "images": images, **decode_settings(self.cfg, self.data)})

    def path(self, clip: Clip) -> Path:
        key = self.key(clip)
        return Path(self.root) / key[:2] / f"{key}.npz"

    def save(self, d: Decoded) -> bool:
        """Keep a clip decoded with both its frames and its audio, when its split is one ``keep`` names (a clip
        that could not be decoded is not kept: the next reader tries again and reports it); whether it was kept."""
        import cv2

        if d.visual_status == "error" or d.n_steps == 0 or (self.keep is not None and d.clip.split not in self.keep):
            return False
        blobs = []
        for frame in d.frames:
            ok, png = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
            if not ok:
                raise RuntimeError(f"{d.clip.path}: a decoded frame ({frame.shape}) could not be written as PNG")
            blobs.append(png.reshape(-1))
        offsets = np.cumsum([0] + [b.size for b in blobs]).astype(np.int64)
        meta = {"n_steps": d.n_steps, "visual_status": d.visual_status, "audio_status": d.audio_status,
                "detail": d.detail, "wave": d.wave is not None, "shapes": [list(f.shape) for f in d.frames]}
        target = self.path(d.clip)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, frames=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), offsets=offsets,
                         wave=d.wave if d.wave is not None else np.zeros(0, np.float32),
                         meta=np.array(json.dumps(meta)))
        return True

    def load(self, clip: Clip) -> Decoded | None:
        """The clip as ``decode_clip(clip, cfg, data, True, True)`` gives it, or None when it is not kept."""
        import cv2

        path = self.path(clip)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                meta = json.loads(str(z["meta"]))
                blob, offsets, wave = z["frames"], z["offsets"], z["wave"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("%s: the kept decode of %s cannot be read (%s); the clip is decoded again", path, clip.id, exc)
            return None
        frames = []
        for k, shape in enumerate(meta["shapes"]):
            frame = cv2.imdecode(blob[offsets[k]:offsets[k + 1]], cv2.IMREAD_UNCHANGED)
            if frame is None or list(frame.shape) != shape:
                log.warning("%s: frame %d of the kept decode of %s is damaged; the clip is decoded again", path, k,
                            clip.id)
                return None
            frames.append(frame)
        return Decoded(clip, meta["n_steps"], frames, wave if meta["wave"] else None,
                       meta["visual_status"], meta["audio_status"], meta["detail"])
