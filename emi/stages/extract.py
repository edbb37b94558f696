"""``emi extract``: every listed clip through the one featurize path into the resumable feature store
(``emi.data.store``); then the index, the manifest and the feature contract.

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
from emi.cues import CUE_VERSION
from emi.contracts.report import ValidationReport
from emi.data.dataset import Clip, face_image_dir, list_clips, transcript_texts
from emi.data.media import image_sequence
from emi.data.store import (INDEX_FILE, MANIFEST_FILE, build_index, pack, publish_shards, remove_leftovers,
                            save_shard, shard_done, shard_path)
from emi.encoders.base import Resolved, resolve
from emi.encoders.registry import encoder_key, load_featurizer
from emi.featurize import Featurizer
from emi.paths import work_dir
from emi.tracking.runs import tracked
from emi.utils import fingerprint, sha256_file, write_json, write_text

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


@dataclass
class ExtractPlan:
    """What this run must compute: shards, their fingerprints and which modality of which shard is missing.
    ``paths`` are the shards in the work folder; ``finish_extract`` links them into ``out_dir``."""

    params: Params
    raw_dir: Path
    out_dir: Path
    clips: list[Clip]
    shards: list[list[Clip]]
    keys: list[dict[str, str]]
    paths: dict[str, list[Path]]
    todo: dict[str, list[int]]
    texts: dict[str, str | None]

    @property
    def shards_to_run(self) -> list[int]:
        return sorted({i for ids in self.todo.values() for i in ids})


def plan_extract(params: Params, raw_dir: Path, transcripts: Path, out_dir: Path) -> ExtractPlan:
    cfg = params.extract
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clips = list_clips(raw_dir)
    texts = transcript_texts(transcripts)
    shards = [clips[i:i + cfg.shard_size] for i in range(0, len(clips), cfg.shard_size)]
    hashes = {c.id: (sha256_file(c.path) if c.path.is_file() else "missing") for c in clips}
    common = {"fps": cfg.fps, "frame_max_side": cfg.frame_max_side, "max_steps": cfg.max_steps}
    keys = []
    for shard in shards:
        ids = [(c.id, hashes[c.id]) for c in shard]
        images = ({"face_images": [(c.id, [(p.name, p.stat().st_size) for p in image_sequence(face_image_dir(c))])
                                   for c in shard]} if cfg.visual_source == "face_images" else {})
        keys.append({
            "visual": fingerprint({**encoder_key(cfg, "visual"), "face_crop": cfg.face_crop,
                                   "face_margin": cfg.face_margin if cfg.face_crop else None, **common, "clips": ids,
                                   **images, "cues": CUE_VERSION}),
            "audio": fingerprint({**encoder_key(cfg, "audio"), "silence_dbfs": params.data.silence_dbfs, **common,
                                  "clips": ids, "cues": CUE_VERSION}),
            "text": fingerprint({**encoder_key(cfg, "text"), "per_clip": True, "threads": 1,
                                 "clips": [(c.id, texts.get(c.id)) for c in shard]}),
        })
    work = work_dir(out_dir)
    paths = {m: [shard_path(work, m, i) for i in range(len(shards))] for m in MODALITIES}
    todo = {m: [i for i in range(len(shards)) if not shard_done(paths[m][i], keys[i][m])] for m in MODALITIES}
    remove_leftovers(work, paths)
    return ExtractPlan(params, raw_dir, out_dir, clips, shards, keys, paths, todo, texts)


_FEATURIZERS: dict[str, Featurizer] = {}


def cached_featurizer(params: Params) -> Featurizer:
    """Encoders loaded once per process (a Dask worker runs many shards)."""
    cfg = params.extract
    key = cfg.model_dump_json() + params.data.model_dump_json()
    if key not in _FEATURIZERS:
        _FEATURIZERS.clear()
        _FEATURIZERS[key] = load_featurizer(cfg, params.data)
    return _FEATURIZERS[key]


def run_shard(plan: ExtractPlan, i: int, featurizer: Featurizer | None = None) -> int:
    """Compute the missing modalities of shard ``i``; returns the number of frames encoded. Safe to run in
    any process: the only output is the shard's own files, each written atomically, receipt last."""
    featurizer = featurizer or cached_featurizer(plan.params)
    todo = [m for m in MODALITIES if i in plan.todo[m]]
    feats = featurizer(plan.shards[i], plan.texts, todo)
    for m in todo:
        arrays = getattr(feats, m)
        if m == "text":  # one vector per clip
            arrays = [row[None] for row in arrays]
        detail = feats.detail if m != "text" else [""] * len(feats.ids)
        save_shard(plan.paths[m][i], plan.keys[i][m], pack(feats.ids, arrays, feats.status[m], detail,
                                                           feats.cues.get(m)),
                   {"modality": m, "clips": len(feats.ids)})
    return sum(len(f) for f in feats.visual) if feats.visual is not None else 0


def finish_extract(plan: ExtractPlan, seconds: float, n_frames: int, report_dir: Path | None) -> ExtractResult:
    """Once every shard is complete: the shards linked into the output folder, index, manifest, feature contract."""
    cfg = plan.params.extract
    missing = [str(plan.paths[m][i]) for m in MODALITIES for i in range(len(plan.shards))
               if not shard_done(plan.paths[m][i], plan.keys[i][m])]
    if missing:
        raise ExtractError(f"{len(missing)} shard(s) are not complete: {', '.join(missing[:5])}")
    published = publish_shards(plan.paths, plan.out_dir)
    index = build_index(plan.shards, published)
    write_text(plan.out_dir / INDEX_FILE, index.to_csv(index=False))
    resolved = [resolve(getattr(cfg, m), f"extract.{m}") for m in MODALITIES]
    manifest = {
        "fps": cfg.fps,
        "dims": {m: getattr(cfg, m).dim for m in MODALITIES},
        "encoders": [r.record() for r in resolved],
        "random_init": [r.role for r in resolved if r.random_init],
        "shards": {m: len(plan.shards) for m in MODALITIES},
        "clips": len(plan.clips),
    }  # what the store holds, never how this run went (timings go to the log and MLflow): same inputs, same bytes
    write_json(plan.out_dir / MANIFEST_FILE, manifest)
    done_clips = sum(len(plan.shards[i]) for i in plan.shards_to_run)
    result = ExtractResult(plan.out_dir, len(plan.clips), {m: len(plan.todo[m]) for m in MODALITIES}, seconds,
                           n_frames / seconds if seconds else 0.0, done_clips / seconds if seconds else 0.0, resolved)
    log.info("extracted %d clips (%d shard parts recomputed) in %.1f s: %.2f clips/s, %.1f frames/s", done_clips,
             sum(len(v) for v in plan.todo.values()), seconds, result.clips_per_s, result.frames_per_s)
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
