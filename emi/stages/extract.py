"""``emi extract``: every listed clip through the one featurize path into the resumable feature store
(``emi.features.extraction``, ``emi.features.store``); then the index, the manifest and the feature contract.

Shards are computed in the work folder (``emi.paths.work_dir``), then linked into the output folder that DVC
records. A shard's receipt fingerprints exactly what its features depend on (encoder spec and code revision, the
grid, the clips' bytes, for text the transcripts, for visual and audio the version of the reliability cues stored
beside the features), so a killed run redoes only unfinished shards and changing e.g.
the text encoder recomputes text shards alone. Shards are independent: the Prefect flow runs them as Dask tasks
before DVC runs this stage, which then finds every shard finished by its receipt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from emi.config import MODALITIES, Params
from emi.contracts.features import validate_features
from emi.contracts.report import ValidationReport
from emi.encoders.base import Resolved, resolve
from emi.features.extraction import ExtractPlan, plan_extract, run_shard
from emi.features.store import INDEX_FILE, MANIFEST_FILE, publish_shards
from emi.tracking.runs import tracked
from emi.utils import write_json, write_text

log = logging.getLogger(__name__)


class ExtractError(RuntimeError):
    """Shards that should be complete are not (the message names them)."""


@dataclass
class ExtractResult:
    out_dir: Path
    n_clips: int
    shards_done_now: dict[str, int]
    seconds: float
    frames_per_s: float
    clips_per_s: float
    encoders: list[Resolved]
    report: ValidationReport | None = None

    def tracking(self) -> dict:
        return {"metrics": {"clips": self.n_clips, "seconds": self.seconds, "clips_per_s": self.clips_per_s,
                            **{f"shards_done_now_{m}": n for m, n in self.shards_done_now.items()},
                            "frames_per_s": self.frames_per_s},
                "artifacts": [self.report.json_path, self.report.md_path, self.out_dir / MANIFEST_FILE,
                              self.out_dir / INDEX_FILE]}


def finish_extract(plan: ExtractPlan, seconds: float, n_frames: int, report_dir: Path | None) -> ExtractResult:
    """Once every shard is complete: the shards linked into the output folder, index, manifest, feature contract."""
    cfg = plan.params.extract
    missing = plan.shards.incomplete()
    if missing:
        raise ExtractError(f"{len(missing)} shard(s) are not complete: {', '.join(missing[:5])}")
    published = publish_shards(plan.shards.paths, plan.out_dir)
    write_text(plan.out_dir / INDEX_FILE, plan.shards.index(published).to_csv(index=False))
    resolved = [resolve(getattr(cfg, m), f"extract.{m}") for m in MODALITIES]
    manifest = {
        "fps": cfg.fps,
        "dims": {m: getattr(cfg, m).dim for m in MODALITIES},
        "encoders": [r.record() for r in resolved],
        "random_init": [r.role for r in resolved if r.random_init],
        "shards": {m: len(plan.shards.shards) for m in MODALITIES},
        "clips": len(plan.clips),
    }  # what the store holds, never how this run went (timings go to the log and MLflow): same inputs, same bytes
    write_json(plan.out_dir / MANIFEST_FILE, manifest)
    todo = plan.shards.todo
    done_clips = sum(len(plan.shards.shards[i]) for i in plan.shards_to_run)
    result = ExtractResult(plan.out_dir, len(plan.clips), {m: len(todo[m]) for m in MODALITIES}, seconds,
                           n_frames / seconds if seconds else 0.0, done_clips / seconds if seconds else 0.0, resolved)
    log.info("extracted %d clips (%d shard parts recomputed) in %.1f s: %.2f clips/s, %.1f frames/s", done_clips,
             sum(len(v) for v in todo.values()), seconds, result.clips_per_s, result.frames_per_s)
    result.report = validate_features(plan.out_dir, plan.params.data.max_error_fraction, report_dir,
                                      plan.raw_dir).raise_if_failed()
    return result


@tracked("extract")
def extract(params: Params, raw_dir: Path, transcripts: Path, out_dir: Path, report_dir: Path | None = None,
            show_progress: bool = True) -> ExtractResult:
    started = time.perf_counter()
    plan = plan_extract(params, raw_dir, transcripts, out_dir)
    n_frames = 0
    with Progress(disable=not show_progress) as progress:
        bar = progress.add_task("extracting features", total=len(plan.shards_to_run) or 1)
        for i in plan.shards_to_run:
            n_frames += run_shard(plan, i)
            progress.advance(bar)
    return finish_extract(plan, time.perf_counter() - started, n_frames, report_dir)
