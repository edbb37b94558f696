"""``emi transcribe``: faster-whisper ASR of every listed clip into one validated transcript table.

The text modality comes from here, never from the generator's script. Work is done in parts of
``transcribe.shard_size`` clips; each part is written atomically (in the work folder, ``emi.paths.work_dir``)
with a fingerprint of what it was computed from, so a killed run recomputes only unfinished parts and a changed
ASR setting recomputes what it affects.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import Progress

from emi.config import Params
from emi.contracts.report import ValidationReport, write_report
from emi.contracts.transcripts import validate_transcripts
from emi.data.dataset import TRANSCRIPT_COLUMNS, Clip, list_clips, read_latents, read_transcripts, split_ids
from emi.encoders.asr import load_asr, transcribe_clip
from emi.encoders.base import resolve
from emi.paths import TRANSCRIPTS_FILE, work_dir
from emi.tracking.runs import tracked
from emi.utils import fingerprint, sha256_file, write_json, write_text

log = logging.getLogger(__name__)

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
        return {"metrics": {"clips": self.n_clips, "clips_transcribed_now": self.n_done_now, "seconds": self.seconds,
                            "wer": facts.get("wer"),
                            "sentence_match_rate": facts.get("sentence_match_rate"),
                            "empty_text_rate": facts.get("empty_text_rate")},
                "artifacts": [self.report.json_path, self.report.md_path, self.table]}


# ----------------------------------------------------------------------------- parts
def _asr_settings(params: Params) -> dict[str, Any]:
    cfg = params.transcribe
    return {"format": PART_FORMAT, "asr": cfg.asr.model_dump(mode="json"), "language": cfg.language,
            "beam_size": cfg.beam_size, "vad": cfg.vad, "compute_type": cfg.compute_type,
            "silence_dbfs": params.data.silence_dbfs, "workers": cfg.workers, "temperatures": cfg.temperatures}


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


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame[TRANSCRIPT_COLUMNS].to_csv(index=False))


def _remove_stale_parts(parts_dir: Path, n_parts: int) -> None:
    for p in parts_dir.glob("part-*"):
        m = _PART_RE.match(p.name)
        if m and int(m.group(1)) >= n_parts:
            p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the stage
@tracked("transcribe")
def transcribe(params: Params, raw_dir: Path, out_dir: Path, report_dir: Path | None,
               show_progress: bool = True) -> TranscribeResult:
    """Transcribe every clip the split files list into ``out_dir/transcripts.csv``; validate; return it.

    Raises ``DataValidationError`` (after writing the table and the report) when more than
    ``data.max_error_fraction`` of the clips cannot be read.
    """
    start = time.perf_counter()
    cfg = params.transcribe
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    parts_dir = work_dir(out_dir) / PARTS_DIR
    clips, listed = list_clips(raw_dir), split_ids(raw_dir)
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
                    for row in pool.map(lambda clip: transcribe_clip(model, clip, cfg, params.data.silence_dbfs), part):
                        rows.append(row)
                        progress.advance(task)
                meta_path.unlink(missing_ok=True)  # the .json marks a finished part: never pair it with a new csv
                _write_table(csv_path, pd.DataFrame(rows, columns=TRANSCRIPT_COLUMNS))
                write_json(meta_path, {"fingerprint": expected, "csv_sha256": sha256_file(csv_path),
                                       "settings": settings, "files": hashes})
                n_done_now += len(part)
            else:
                progress.advance(task, len(part))
            frames.append(read_transcripts(csv_path))
    _remove_stale_parts(parts_dir, len(parts))

    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRANSCRIPT_COLUMNS)
    table_path = out_dir / TRANSCRIPTS_FILE
    _write_table(table_path, table)
    seconds = time.perf_counter() - start

    report = validate_transcripts(table, listed, params.data.max_error_fraction, report_dir=None,
                                  reference=read_latents(raw_dir))
    report.facts["asr"] = asr
    report.facts["settings"] = {k: v for k, v in settings.items() if k != "format"}
    # the report is a DVC output: how this run went (clips done now, seconds) goes to the log and MLflow instead
    if report_dir is not None:
        write_report(report, Path(report_dir))

    counts = ", ".join(f"{s} {n}" for s, n in report.facts["status_counts"].items() if n)
    rate = n_done_now / seconds if seconds > 0 else float("inf")
    wer = report.facts.get("wer")
    log.info("transcribed %d clips (%d now, %d from finished parts) in %.1f s (%.2f clips/s): %s%s",
             len(table), n_done_now, len(table) - n_done_now, seconds, rate, counts,
             f"; WER {wer:.3f} vs the generator's sentences" if wer is not None else "")
    report.raise_if_failed()
    return TranscribeResult(table_path, len(table), n_done_now, seconds, report, asr)
