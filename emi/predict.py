"""``emi predict`` (and the registered MLflow model): the trained pipeline on new videos.

Transcribe, featurize (the one path `emi extract` uses, with the Stage-I model's fine-tuned encoder blocks),
project with Stage I and run Stage II: six intensities and the per-modality fusion weights per video. The models
are loaded once; clips go through in chunks of ``extract.shard_size``, so a folder of thousands of clips needs
the memory of one chunk. An unreadable clip is a row with status ``error`` and the reason; the others are still
predicted.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, MODALITIES, Params
from emi.data.dataset import Clip
from emi.data.media import probe
from emi.evaluation.submission import submission
from emi.utils import write_json, write_text

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
"""What a folder given to ``emi predict`` contributes (case-insensitive); other files in it are ignored."""
TABLE_SUFFIXES = (".csv", ".json")
WEIGHTS = tuple(f"weight_{m}" for m in "VAT")
COLUMNS = ("id", "Filename", *EMOTIONS, *WEIGHTS, "status", "transcript", "warning")
"""One row per video: ``id`` is the path as given, ``Filename`` its stem (the submission's key); a row with
status ``error`` has no values and the reason in ``warning``."""


class PredictError(RuntimeError):
    """What `emi predict` cannot serve (a missing path, a folder without videos, two videos with one stem, an
    unknown table format, no readable video at all); the message names the files."""


def video_inputs(inputs: list[Path]) -> list[Path]:
    """The videos named by files and folders, in the order given: a folder means every file directly inside it
    with a video extension (``VIDEO_SUFFIXES``, hidden files left out), sorted by name. The same file named twice counts once; a missing
    path, a folder without videos and two videos with one file stem (one ``Filename`` in a submission) are
    errors naming them."""
    videos: list[Path] = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                            and not p.name.startswith(".")),  # macOS ._name resource forks, hidden files
                           key=lambda p: p.name)
            if not found:
                raise PredictError(f"{path}: no video files in this folder (looked for {' '.join(VIDEO_SUFFIXES)})")
            videos += found
        elif path.is_file():
            videos.append(path)  # a file named explicitly is tried whatever its extension
        else:
            raise PredictError(f"{path}: no such file or folder")
    seen: dict[Path, Path] = {}
    by_stem: dict[str, Path] = {}
    for video in videos:
        if seen.setdefault(video.resolve(), video) is not video:
            continue
        first = by_stem.setdefault(video.stem, video)
        if first is not video:
            raise PredictError(f"{first} and {video} have the same file stem {video.stem!r}, which names a clip in "
                               "the table and the submission: rename one or predict them separately")
    return list(seen.values())


class Predictor:
    """The trained pipeline, loaded once: ASR, the (fine-tuned) encoders behind one Featurizer, the Stage-I heads
    and the Stage-II model."""

    def __init__(self, params: Params, alignment_path: Path, fusion_path: Path):
        # torch and the encoders are imported here, once there is a video to predict: a wrong argument to
        # `emi predict` fails in a second, not after the ~15 s these imports take
        from emi.encoders.asr import load_asr
        from emi.encoders.registry import load_featurizer
        from emi.train.fusion import load_fusion
        from emi.train.projection import load_alignment, load_tuned_encoders

        t, cfg = params.transcribe, params.extract
        self.params = params
        self.asr, _ = load_asr(t.asr, t.device, t.compute_type, t.workers)
        self.featurizer = load_featurizer(cfg, params.data, MODALITIES, load_tuned_encoders(alignment_path))
        self.alignment, self.norm = load_alignment(alignment_path)
        self.fusion, self.trained = load_fusion(fusion_path)

    def __call__(self, clips: list[Clip]) -> dict[str, dict]:
        """A row (``COLUMNS``) per clip id; a clip that fails to transcribe or decode gets an error row."""
        from emi.encoders.asr import transcribe_clip
        from emi.train.fusion import prediction_frame
        from emi.data.sequences import SequenceData
        from emi.train.projection import aligned_inputs

        p = self.params
        with ThreadPoolExecutor(p.transcribe.workers) as pool:  # CTranslate2 releases the GIL; order is kept
            transcripts = list(pool.map(lambda c: transcribe_clip(self.asr, c, p.transcribe, p.data.silence_dbfs),
                                        clips))
        errors = {c.id: row["detail"].removeprefix(f"{c.path}: ") for c, row in zip(clips, transcripts)
                  if row["status"] == "error"}
        texts = {r["id"]: (r["text"] or None) if r["status"] == "ok" else None for r in transcripts}
        usable = [c for c in clips if c.id not in errors]
        rows = {}
        if usable:
            feats = self.featurizer(usable, texts)
            for clip, status, detail in zip(usable, feats.status["visual"], feats.detail):
                if status == "error":
                    errors[clip.id] = f"cannot use this video: {detail}"
            good = [i for i, c in enumerate(usable) if c.id not in errors]
            if good:
                data = SequenceData(feats.ids, feats.visual, feats.audio, feats.text, feats.mask(), None,
                                    feats.cues).subset(good)
                table = prediction_frame(self.fusion, aligned_inputs(data, (self.alignment, self.norm),
                                                                       self.trained.inputs), p.stage2.batch_size)
                notes = feats.notes()
                for i, row in zip(good, table.to_dict("records")):
                    clip = usable[i]
                    if notes[i]:
                        log.warning("%s: %s -> its fusion weight is 0", clip.path, notes[i])
                    warning = "; ".join(filter(None, (notes[i], feats.detail[i])))  # detail: e.g. a long clip subsampled
                    rows[clip.id] = _row(clip, "ok", row | {"transcript": texts[clip.id] or "", "warning": warning})
        return rows | {c.id: _error_row(c, errors[c.id]) for c in clips if c.id in errors}


def predict_videos(paths: list[str | Path], params: Params, alignment_path: Path, fusion_path: Path) -> pd.DataFrame:
    """Six intensities + fusion weights per video, the transcript, a warning naming unusable modalities, and
    status ``ok``; an unreadable video is a row with status ``error`` and the reason (in ``warning``). Every
    video unreadable is a ``PredictError`` listing them."""
    started = time.perf_counter()
    clips = [Clip(str(p), "predict", Path(p)) for p in paths]
    if not clips:
        raise PredictError("no videos to predict")
    chunk = params.extract.shard_size
    predictor: Predictor | None = None
    rows: list[dict] = []
    for start in range(0, len(clips), chunk):
        part = clips[start:start + chunk]
        # probing demuxes every packet: it catches truncated files that decoding would silently cut short
        unreadable = {c.id: f"not a readable video ({info.error})" for c in part
                      if not (info := probe(c.path)).readable}
        readable = [c for c in part if c.id not in unreadable]
        if readable and predictor is None:
            predictor = Predictor(params, alignment_path, fusion_path)  # not at all when nothing can be read
        done = predictor(readable) if readable else {}
        rows += [done[c.id] if c.id in done else _error_row(c, unreadable[c.id]) for c in part]
        if len(clips) > chunk:
            log.info("predict: %d of %d clip(s) done", len(rows), len(clips))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    ok = int((table["status"] == "ok").sum())
    if not ok:
        raise PredictError(f"no readable video among {len(clips)} input(s): " + "; ".join(
            f"{i}: {reason}" for i, reason in zip(table["id"], table["warning"])))
    seconds = time.perf_counter() - started
    log.info("predict: %d of %d clip(s) in %.1f s (%.3g clips/s)", ok, len(clips), seconds, ok / seconds)
    return table


def _row(clip: Clip, status: str, values: dict) -> dict:
    return dict.fromkeys(COLUMNS, np.nan) | values | {"id": clip.id, "Filename": Path(clip.path).stem,
                                                      "status": status}


def _error_row(clip: Clip, reason: str) -> dict:
    log.warning("%s: %s (skipped)", clip.path, reason)
    return _row(clip, "error", {"transcript": "", "warning": reason})


def table_format(path: Path) -> str:
    """``csv`` or ``json``, by the path's extension; any other is an error naming the path."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise PredictError(f"{path}: unknown table format {suffix or '(no extension)'!r}: use .csv or .json")
    return suffix[1:]


def write_predictions(table: pd.DataFrame, path: Path) -> Path:
    """The prediction table as CSV, or as JSON (a list of records) for a ``.json`` path."""
    if table_format(path) == "json":
        return write_json(path, json.loads(table.to_json(orient="records")))  # pandas: NaN -> null, numpy -> JSON
    return write_text(path, table.to_csv(index=False, float_format="%.6f"))


def submission_table(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The ABAW submission of the predicted clips (``Filename`` = file stem, values clipped to [0, 1]) and the ids
    of the unreadable clips it leaves out."""
    ok = table[table["status"] == "ok"]
    repeated = sorted(set(ok["Filename"][ok["Filename"].duplicated()]))
    if repeated:
        raise PredictError(f"several videos share the file stem(s) {', '.join(repeated)}: one Filename per clip")
    predicted = ok.set_index("Filename")[list(EMOTIONS)]
    rows, _ = submission(list(predicted.index), predicted, np.full(len(EMOTIONS), np.nan), max_error_fraction=0.0)
    left_out = table.loc[table["status"] != "ok", "id"].tolist()
    if left_out:
        log.warning("submission: %d unreadable clip(s) left out: %s", len(left_out), ", ".join(left_out))
    return rows, left_out
