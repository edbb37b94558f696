"""``emi predict`` (and the registered MLflow model): the trained pipeline on new videos.

Transcribe, featurize (the one path `emi extract` uses, with the Stage-I model's fine-tuned encoder blocks),
project with Stage I and run Stage II: six intensities and the per-modality fusion weights per video.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from emi.config import MODALITIES, Params
from emi.data.dataset import Clip
from emi.data.media import probe
from emi.encoders.asr import load_asr, transcribe_clip
from emi.encoders.base import resolve_device, resolve_dtype
from emi.encoders.registry import load_encoders
from emi.featurize import Featurizer
from emi.train.projection import aligned_inputs, load_tuned_encoders
from emi.train.fusion import load_fusion, prediction_frame
from emi.train.loop import SequenceData

log = logging.getLogger(__name__)


class PredictError(RuntimeError):
    """A video that cannot be used at all (unreadable, no video stream); the message names the file."""


def predict_videos(paths: list[str | Path], params: Params, alignment_path: Path, fusion_path: Path) -> pd.DataFrame:
    """Six intensities + fusion weights per video, the transcript, and a warning naming unusable modalities."""
    paths = [Path(p) for p in paths]
    for path in paths:
        info = probe(path)
        if not info.readable:
            raise PredictError(f"{path}: not a readable video ({info.error})")
    clips = [Clip(str(p), "predict", p) for p in paths]
    asr, _ = load_asr(params.transcribe.asr, params.transcribe.device, params.transcribe.compute_type)
    rows = {c.id: transcribe_clip(asr, c, params.transcribe, params.data.silence_dbfs) for c in clips}
    for row in rows.values():
        if row["status"] == "error":
            raise PredictError(row["detail"] if row["detail"].startswith(row["id"]) else
                               f"{row['id']}: {row['detail']}")
    texts = {i: (r["text"] or None) if r["status"] == "ok" else None for i, r in rows.items()}
    cfg = params.extract
    device = resolve_device(cfg.device)
    encoders = load_encoders(cfg, device, resolve_dtype(cfg.dtype, device), set(MODALITIES),
                             load_tuned_encoders(alignment_path))
    feats = Featurizer(cfg, params.data, encoders)(clips, texts)
    broken = [f"{clip.path}: cannot use this video: {detail}" for clip, status, detail in
              zip(clips, feats.status["visual"], feats.detail) if status == "error"]
    if broken:
        raise PredictError("; ".join(broken))
    data = SequenceData(feats.ids, feats.visual, feats.audio, feats.text, feats.mask(), None)
    model, trained = load_fusion(fusion_path)
    table = prediction_frame(model, aligned_inputs(data, alignment_path, trained.inputs), params.stage2.batch_size)
    table["transcript"] = [texts[c.id] or "" for c in clips]
    table["warning"] = feats.notes()
    for clip, note in zip(clips, table["warning"]):
        if note:
            log.warning("%s: %s -> its fusion weight is 0", clip.path, note)
    return table
