"""``emi transcribe``: faster-whisper ASR of every listed clip into one validated transcript table.

The text modality comes from here, never from the generator's script. Work is done in parts of
``transcribe.shard_size`` clips (``emi.data.parts``, in the work folder ``emi.paths.work_dir``), so a killed run
recomputes only unfinished parts and a changed ASR setting recomputes what it affects.
"""

from __future__ import annotations

import logging
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
from emi.data.dataset import TRANSCRIPT_COLUMNS, list_clips, read_latents, read_transcripts, split_ids
from emi.data.parts import PART_FORMAT, PARTS_DIR, Part, remove_stale_parts, write_transcripts
from emi.encoders.asr import load_asr, transcribe_clip, transcribe_clips
from emi.encoders.base import resolve
from emi.paths import TRANSCRIPTS_FILE, work_dir
from emi.tracking.runs import tracked

log = logging.getLogger(__name__)


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
                            "empty_text_rate": facts.get("empty_text_rate"),
                            "max_compression_ratio": facts.get("compression_ratio_ok", {}).get("max")},
                "artifacts": [self.report.json_path, self.report.md_path, self.table]}


def _asr_settings(params: Params) -> dict[str, Any]:
    """What a transcript depends on: every transcribe key but the part size, and the silence level. ``batch_size``
    only when batched (1 decodes as before the key existed: the parts transcribed then stay finished)."""
    cfg = params.transcribe
    skip = {"shard_size"} | ({"batch_size"} if cfg.batch_size == 1 else set())
    return {"format": PART_FORMAT, **cfg.model_dump(mode="json", exclude=skip),
            "silence_dbfs": params.data.silence_dbfs}


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
    settings = _asr_settings(params)
    parts = [Part.at(parts_dir, k, clips[i:i + cfg.shard_size], settings)
             for k, i in enumerate(range(0, len(clips), cfg.shard_size))]
    asr = resolve(cfg.asr, "transcribe.asr").describe()

    model = None
    n_done_now = 0
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task("transcribe", total=len(clips))
        for part in parts:
            if part.is_done():
                progress.advance(task, len(part.clips))
                continue
            if model is None:  # loaded only when there is work: a finished run resumes instantly
                # batched: one CTranslate2 worker decodes each batch with every thread; else `workers` clips at once
                model, resolved = load_asr(cfg.asr, cfg.device, cfg.compute_type,
                                           cfg.workers if cfg.batch_size == 1 else 1)
                asr = resolved.describe()
                log.info("ASR %s%s", asr, f", {cfg.batch_size} windows per batch" if cfg.batch_size > 1 else "")
            with ThreadPoolExecutor(cfg.workers) as pool:  # CTranslate2 releases the GIL; order is kept
                if cfg.batch_size > 1:  # the pool reads the clips' audio
                    rows = transcribe_clips(model, part.clips, cfg, params.data.silence_dbfs, read=pool.map)
                    progress.advance(task, len(part.clips))
                else:
                    rows = []
                    for row in pool.map(lambda clip: transcribe_clip(model, clip, cfg, params.data.silence_dbfs),
                                        part.clips):
                        rows.append(row)
                        progress.advance(task)
            part.write(rows, settings)
            n_done_now += len(part.clips)
    remove_stale_parts(parts_dir, len(parts))

    frames = [read_transcripts(part.csv) for part in parts]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRANSCRIPT_COLUMNS)
    table_path = out_dir / TRANSCRIPTS_FILE
    write_transcripts(table_path, table)
    seconds = time.perf_counter() - start

    report = validate_transcripts(table, listed, params.data.max_error_fraction, report_dir=None,
                                  reference=read_latents(raw_dir),
                                  compression_ratio_threshold=cfg.compression_ratio_threshold)
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
