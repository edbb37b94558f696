"""The trained pipeline on clips held in memory: new videos (`emi predict`) and damaged copies (robustness).

The same functions as the stages (decode_clip, encode_frames, encode_audio, the Stage-I projection, Stage II)
so a clip predicted here gets the numbers `evaluate` reports for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi.config import EMOTIONS, Params
from emi.encoders import load_asr, resolve_device, resolve_dtype
from emi.media import probe
from emi.extract import Decoded, decode_clip, encode_audio, encode_frames, load_encoders
from emi.model import EMIFusionModel
from emi.stage1 import compose, load_alignment, load_tuned_encoders, project_clip
from emi.stage2 import load_model, predict
from emi.train import SequenceData
from emi.transcribe import Clip, transcribe_clip

log = logging.getLogger(__name__)
MODALITY_NAMES = ("visual", "audio", "text")


class PredictError(RuntimeError):
    """A video that cannot be used at all (unreadable, no video stream); the message names the file."""


@dataclass(frozen=True)
class Damage:
    """What to break in every clip it is applied to (robustness conditions)."""

    occlusion_box: tuple[float, float, float, float] | None = None  # fractions x0, y0, x1, y1
    noise_snr_db: float | None = None
    drop_audio: bool = False
    drop_text: bool = False


def damage_clip(d: Decoded, damage: Damage, rng: np.random.Generator) -> Decoded:
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


@dataclass
class ClipFeatures:
    """Encoder features of clips (as `extract` stores them) plus why a modality is unusable."""

    data: SequenceData
    notes: list[str]


def clip_features(params: Params, clips: list[Clip], texts: dict[str, str | None], encoders: dict,
                  damage: Damage | None = None, seed: int = 0) -> ClipFeatures:
    cfg = params.extract
    rng = np.random.default_rng(seed)
    decoded = []
    for clip in clips:
        d = decode_clip(clip, cfg, True, True, params.download.validation.max_duration_s)
        if d.visual_status == "error":
            raise PredictError(f"{clip.path}: cannot use this video: {d.detail}")
        decoded.append(damage_clip(d, damage, rng) if damage else d)
    visual = encode_frames(encoders["visual"], decoded, cfg.batch_size)
    usable = [d.wave if d.audio_status in ("ok", "silent") else None for d in decoded]
    audio = encode_audio(encoders["audio"], usable, [d.n_steps for d in decoded], cfg.fps, cfg.audio.window_s,
                         cfg.batch_size)
    text = np.zeros((len(clips), cfg.text.dim), np.float32)
    notes, mask = [], np.zeros((len(clips), 3), bool)
    for i, (clip, d) in enumerate(zip(clips, decoded)):
        sentence = None if damage and damage.drop_text else texts.get(clip.id)
        if sentence:
            text[i] = encoders["text"].encode([sentence])[0]
        mask[i] = (True, d.audio_status == "ok", bool(sentence))
        missing = [name for name, ok in zip(MODALITY_NAMES, mask[i]) if not ok]
        notes.append("" if not missing else "no usable " + ", ".join(missing) + (
            f" (audio: {d.audio_status})" if "audio" in missing else ""))
    return ClipFeatures(SequenceData([c.id for c in clips], visual, audio, text, mask, None), notes)


def model_inputs(raw: SequenceData, alignment_path: Path, inputs: str) -> SequenceData:
    """Stage-I projections and standardized encoder features, composed the way Stage II was trained."""
    alignment, norm = load_alignment(alignment_path)
    vs, as_, ts = [], [], []
    for i in range(len(raw)):
        views = project_clip(alignment, norm, raw.visual[i], raw.audio[i], raw.text[i])
        flat = {f"{view}_{name}": views[view][key] for view in ("aligned", "encoder")
                for name, key in zip(MODALITY_NAMES, "VAT")}
        x = compose(flat, inputs)
        vs.append(x["visual"].astype(np.float32))
        as_.append(x["audio"].astype(np.float32))
        ts.append(x["text"].astype(np.float32))
    return SequenceData(raw.ids, vs, as_, np.stack(ts), raw.mask.copy(), None)


def run_model(model: EMIFusionModel, data: SequenceData, batch_size: int) -> pd.DataFrame:
    pred, weights = predict(model, data, batch_size)
    table = pd.DataFrame(pred, columns=list(EMOTIONS))
    for j, m in enumerate("VAT"):
        table[f"weight_{m}"] = weights[:, j]
    table.insert(0, "id", data.ids)
    return table


def predict_videos(paths: list[str | Path], params: Params, alignment_path: Path, fusion_path: Path,
                   show_progress: bool = False) -> pd.DataFrame:
    """Transcribe, extract and run both stages on new videos: six intensities + fusion weights per video."""
    paths = [Path(p) for p in paths]
    for path in paths:
        info = probe(path)
        if not info.readable:
            raise PredictError(f"{path}: not a readable video ({info.error})")
    clips = [Clip(str(p), "predict", p) for p in paths]
    asr, _ = load_asr(params.transcribe.asr, params.transcribe.device, params.transcribe.compute_type)
    rows = {c.id: transcribe_clip(asr, c, params) for c in clips}
    for row in rows.values():
        if row["status"] == "error":
            raise PredictError(row["detail"] if row["detail"].startswith(row["id"]) else
                               f"{row['id']}: {row['detail']}")
    texts = {i: (r["text"] or None) if r["status"] == "ok" else None for i, r in rows.items()}
    device = resolve_device(params.extract.device)
    encoders = load_encoders(params.extract, device, resolve_dtype(params.extract.dtype, device),
                             set(MODALITY_NAMES), load_tuned_encoders(alignment_path))
    feats = clip_features(params, clips, texts, encoders)
    model = load_model(fusion_path)
    data = model_inputs(feats.data, alignment_path, model_params_inputs(fusion_path))
    table = run_model(model, data, params.stage2.batch_size)
    table["transcript"] = [texts[c.id] or "" for c in clips]
    table["warning"] = feats.notes
    for clip, note in zip(clips, feats.notes):
        if note:
            log.warning("%s: %s -> its fusion weight is 0", clip.path, note)
    return table


def model_params_inputs(fusion_path: Path) -> str:
    state = torch.load(fusion_path, map_location="cpu", weights_only=True)
    return state["params"]["inputs"]
