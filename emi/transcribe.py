"""The transcribe stage: faster-whisper ASR of every listed clip into one validated transcript table.

The text modality comes from here, never from the generator's script. Work is done in parts of
``transcribe.shard_size`` clips; each part is written atomically with a fingerprint of what it was computed
from, so a killed run recomputes only unfinished parts and a changed ASR setting recomputes what it affects.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.audio import MediaError, decode_audio, rms_dbfs
from emi.config import Params
from emi.encoders import AUDIO_SAMPLE_RATE, load_asr, resolve
from emi.synth.generate import GENERATOR_DIR
from emi.utils import fingerprint, sha256_file, write_json, write_text, tracked
from emi.validation import SPLITS, DataValidationError, ValidationReport, validate_transcripts, write_report

log = logging.getLogger(__name__)
logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per clip is noise in a stage log

COLUMNS = ["id", "split", "text", "language", "avg_logprob", "no_speech_prob", "duration_s", "status", "detail"]
TABLE_NAME = "transcripts.csv"
PARTS_DIR = "parts"
PART_FORMAT = 1  # bump when a part's columns or their meaning change: old parts are then recomputed
_PART_RE = re.compile(r"^part-(\d{5})\.(csv|json)$")


@dataclass
class TranscribeResult:
    table: Path
    n_clips: int
    n_done_now: int  # clips transcribed by this run (the rest came from finished parts)
    seconds: float
    report: ValidationReport
    asr: str  # where the ASR weights came from

    def tracking(self) -> dict:
        facts = self.report.facts
        return {"metrics": {"clips": self.n_clips, "seconds": self.seconds, "wer": facts.get("wer"),
                            "sentence_match_rate": facts.get("sentence_match_rate"),
                            "empty_text_rate": facts.get("empty_text_rate")},
                "artifacts": [self.report.json_path, self.report.md_path, self.table]}


@dataclass(frozen=True)
class Clip:
    id: str
    split: str
    path: Path


# ----------------------------------------------------------------------------- clip list
def list_clips(raw_dir: Path) -> tuple[list[Clip], dict[str, list[str]]]:
    """Clips in split order (train, valid, test) then id; and each split's ids in CSV order."""
    raw_dir = Path(raw_dir)
    split_ids: dict[str, list[str]] = {}
    for split in SPLITS:
        path = raw_dir / f"{split}_split.csv"
        if not path.is_file():
            continue
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        frame.columns = [c.strip() for c in frame.columns]
        if "Filename" not in frame.columns:
            raise DataValidationError(f"{path}: no Filename column (header {list(frame.columns)})")
        split_ids[split] = [f.strip() for f in frame["Filename"] if f.strip()]
    if not split_ids:
        raise DataValidationError(f"{raw_dir}: no train/valid/test split CSV; run the download stage first")
    seen: dict[str, str] = {}
    for split, ids in split_ids.items():
        for i in ids:
            if i in seen:
                log.warning("id %s is listed in %s and %s; transcribed once, under %s", i, seen[i], split, seen[i])
            else:
                seen[i] = split
    clips = [Clip(i, s, raw_dir / "raw" / f"{i}.mp4") for i, s in seen.items()]
    clips.sort(key=lambda c: (SPLITS.index(c.split), *_id_key(c.id)))
    return clips, split_ids


def _id_key(clip_id: str) -> tuple[int, str]:
    return (int(clip_id), clip_id) if clip_id.isdigit() else (1 << 62, clip_id)


# ----------------------------------------------------------------------------- one clip
def _row(clip: Clip, status: str, detail: str = "", duration_s: float = math.nan, text: str = "",
         language: str = "", avg_logprob: float = math.nan, no_speech_prob: float = math.nan) -> dict[str, Any]:
    return {"id": clip.id, "split": clip.split, "text": text, "language": language, "avg_logprob": avg_logprob,
            "no_speech_prob": no_speech_prob, "duration_s": duration_s, "status": status, "detail": detail}


def transcribe_clip(model, clip: Clip, params: Params) -> dict[str, Any]:
    """One table row; a clip that cannot be read or recognised gets a status, never an exception."""
    cfg = params.transcribe
    try:
        wave = decode_audio(clip.path, AUDIO_SAMPLE_RATE)
    except MediaError as exc:
        return _row(clip, "error", str(exc))
    if wave is None:
        return _row(clip, "no_audio", "no audio stream")
    duration = round(wave.size / AUDIO_SAMPLE_RATE, 4)
    level = rms_dbfs(wave)
    if level < params.extract.silence_dbfs:
        return _row(clip, "silent", f"audio RMS {level:.1f} dBFS < {params.extract.silence_dbfs:g} dBFS",
                    duration_s=duration)
    try:
        segments, info = model.transcribe(wave, language=cfg.language, beam_size=cfg.beam_size,
                                          vad_filter=cfg.vad, condition_on_previous_text=False)
        segments = list(segments)  # a generator: decoding (and its failures) happens here
    except (RuntimeError, ValueError) as exc:
        return _row(clip, "error", f"{clip.path}: ASR failed: {type(exc).__name__}: {exc}", duration_s=duration)
    text = " ".join(s.text.strip() for s in segments).strip()
    if segments:
        # whisper's avg_logprob is a per-token mean: weighting by token count gives the clip's per-token mean
        weights = np.array([max(len(s.tokens), 1) for s in segments], dtype=np.float64)
        logprob = float(np.average([s.avg_logprob for s in segments], weights=weights))
        no_speech = float(max(s.no_speech_prob for s in segments))
    else:
        logprob, no_speech = math.nan, 1.0
    return _row(clip, "ok" if text else "empty", "" if text else "no speech recognised", duration_s=duration,
                text=text, language=info.language or cfg.language, avg_logprob=round(logprob, 5),
                no_speech_prob=round(no_speech, 5))


# ----------------------------------------------------------------------------- parts
def _asr_settings(params: Params) -> dict[str, Any]:
    cfg = params.transcribe
    return {"format": PART_FORMAT, "asr": cfg.asr.model_dump(mode="json"), "language": cfg.language,
            "beam_size": cfg.beam_size, "vad": cfg.vad, "compute_type": cfg.compute_type,
            "silence_dbfs": params.extract.silence_dbfs, "workers": cfg.workers}


def _file_hashes(clips: list[Clip], cached: dict[str, list]) -> dict[str, list]:
    """id -> [size, mtime_ns, sha256]; a file unchanged in size and mtime since the last run is not re-read."""
    out: dict[str, list] = {}
    for c in clips:
        if not c.path.is_file():
            out[c.id] = [None, None, None]
            continue
        st = c.path.stat()
        old = cached.get(c.id)
        same = isinstance(old, list) and len(old) == 3 and old[:2] == [st.st_size, st.st_mtime_ns]
        out[c.id] = old if same else [st.st_size, st.st_mtime_ns, sha256_file(c.path)]
    return out


def _part_fingerprint(settings: dict[str, Any], clips: list[Clip], hashes: dict[str, list]) -> str:
    return fingerprint({"settings": settings, "clips": [[c.id, c.split, hashes[c.id][2]] for c in clips]})


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _part_is_done(csv_path: Path, meta: dict[str, Any], expected: str) -> bool:
    try:
        return meta.get("fingerprint") == expected and meta.get("csv_sha256") == sha256_file(csv_path)
    except OSError:
        return False


def read_transcripts(path: Path) -> pd.DataFrame:
    """A transcript table (or part) as written: ids and text as strings (empty text stays ''), numbers as floats."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("avg_logprob", "no_speech_prob", "duration_s"):
        frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="coerce")
    return frame[COLUMNS]


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame[COLUMNS].to_csv(index=False))


def _remove_stale_parts(parts_dir: Path, n_parts: int) -> None:
    for p in parts_dir.glob("part-*"):
        m = _PART_RE.match(p.name)
        if m and int(m.group(1)) >= n_parts:
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the stage
@tracked("transcribe")
def transcribe(params: Params, raw_dir: Path = Path("data/raw"), out_dir: Path = Path("data/transcripts"),
               report_dir: Path | None = Path("reports/validation"), show_progress: bool = True) -> TranscribeResult:
    """Transcribe every clip the split files list into ``out_dir/transcripts.csv``; validate; return it.

    Raises ``DataValidationError`` (after writing the table and the report) when more than
    ``download.validation.max_error_fraction`` of the clips cannot be read.
    """
    start = time.perf_counter()
    cfg = params.transcribe
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    parts_dir = out_dir / PARTS_DIR
    clips, split_ids = list_clips(raw_dir)
    size = cfg.shard_size
    parts = [clips[i:i + size] for i in range(0, len(clips), size)]
    settings = _asr_settings(params)
    asr = resolve(cfg.asr, "transcribe.asr").describe()

    model = None
    n_done_now = 0
    frames: list[pd.DataFrame] = []
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task("transcribe", total=len(clips))
        for k, part in enumerate(parts):
            csv_path, meta_path = parts_dir / f"part-{k:05d}.csv", parts_dir / f"part-{k:05d}.json"
            meta = _read_meta(meta_path)
            cached = meta.get("files") if isinstance(meta.get("files"), dict) else {}
            hashes = _file_hashes(part, cached)
            expected = _part_fingerprint(settings, part, hashes)
            if not _part_is_done(csv_path, meta, expected):
                if model is None:  # loaded only when there is work: a finished run resumes instantly
                    model, resolved = load_asr(cfg.asr, cfg.device, cfg.compute_type, cfg.workers)
                    asr = resolved.describe()
                    log.info("ASR %s", asr)
                with ThreadPoolExecutor(cfg.workers) as pool:  # CTranslate2 releases the GIL; order is kept
                    rows = []
                    for row in pool.map(lambda clip: transcribe_clip(model, clip, params), part):
                        rows.append(row)
                        progress.advance(task)
                meta_path.unlink(missing_ok=True)  # the .json marks a finished part: never pair it with a new csv
                _write_table(csv_path, pd.DataFrame(rows, columns=COLUMNS))
                write_json(meta_path, {"fingerprint": expected, "csv_sha256": sha256_file(csv_path),
                                       "settings": settings, "files": hashes})
                n_done_now += len(part)
            else:
                progress.advance(task, len(part))
            frames.append(read_transcripts(csv_path))
    _remove_stale_parts(parts_dir, len(parts))

    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    table_path = out_dir / TABLE_NAME
    _write_table(table_path, table)
    seconds = time.perf_counter() - start

    latents = raw_dir / GENERATOR_DIR / "latents.csv"
    reference = pd.read_csv(latents, dtype={"id": str}, keep_default_na=False) if latents.is_file() else None
    tolerance = params.download.validation.max_error_fraction
    report = validate_transcripts(table, split_ids, tolerance, report_dir=None, reference=reference)
    report.facts["asr"] = asr
    report.facts["settings"] = {k: v for k, v in settings.items() if k != "format"}
    report.facts["clips_transcribed_now"] = n_done_now
    report.facts["seconds"] = round(seconds, 2)
    if report_dir is not None:
        write_report(report, Path(report_dir))

    counts = ", ".join(f"{s} {n}" for s, n in report.facts["status_counts"].items() if n)
    rate = n_done_now / seconds if seconds > 0 else float("inf")
    wer = report.facts.get("wer")
    log.info("transcribed %d clips (%d now, %d from finished parts) in %.1f s (%.2f clips/s): %s%s",
             len(table), n_done_now, len(table) - n_done_now, seconds, rate, counts,
             f"; WER {wer:.3f} vs the generator's sentences" if wer is not None else "")
    if not report.passed:
        raise DataValidationError(report.summary(limit=len(report.problems)), report)
    return TranscribeResult(table_path, len(table), n_done_now, seconds, report, asr)
