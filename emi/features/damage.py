"""Damage, the one definition: what each damage kind (``emi.config.DAMAGE_KINDS``) does to a decoded clip, for
corruption-aware training copies and the robustness conditions alike."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from emi.features.decode import Decoded

DAMAGED_MODALITY: dict[str, str] = {"occluded_face": "V", "noisy_audio": "A", "missing_audio": "A",
                                    "missing_text": "T"}
"""The modality (V, A, T) each damage kind hurts."""


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




def damage_of(kind: str, occlusion_box: tuple[float, float, float, float], noise_snr_db: float | None) -> Damage:
    """The damage of a kind: an opaque ``occlusion_box`` over every frame, noise at ``noise_snr_db``, no audio
    track, or no transcript."""
    if kind == "occluded_face":
        return Damage(occlusion_box=tuple(occlusion_box))
    if kind == "noisy_audio":
        return Damage(noise_snr_db=noise_snr_db)
    if kind == "missing_audio":
        return Damage(drop_audio=True)
    if kind == "missing_text":
        return Damage(drop_text=True)
    raise ValueError(f"unknown damage kind {kind!r}; kinds: {', '.join(DAMAGED_MODALITY)}")
