"""``emi augment``: damaged copies of a share of the training clips for corruption-aware Stage II training
(``emi.train.augmentation``), projected by the frozen Stage-I model into ``augmented.npz``, with ``copies.csv`` naming
each copy's source clip and damage. Validation and test clips are never copied."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from emi.train.augmentation import AugmentError, assemble, copies_table, plan_copies, plan_shards, run_all
from emi.config import Params
from emi.data.dataset import list_clips, read_labels, split_ids
from emi.encoders.registry import load_featurizer
from emi.features.store import load_features
from emi.paths import AUGMENTED_FILE, COPIES_FILE, work_dir
from emi.tracking.runs import tracked
from emi.train.projection import load_alignment, load_tuned_encoders, write_aligned
from emi.utils import write_text

log = logging.getLogger(__name__)


@dataclass
class AugmentResult:
    out_dir: Path
    copies: int
    made: int
    problems: dict[str, str]
    shards_done_now: int
    seconds: float

    def tracking(self) -> dict:
        return {"metrics": {"copies": self.copies, "made": self.made, "failed": len(self.problems),
                            "shards_done_now": self.shards_done_now, "seconds": self.seconds},
                "artifacts": [self.out_dir / COPIES_FILE]}


@tracked("augment")
def augment(params: Params, raw_dir: Path, features: Path, alignment_path: Path, out_dir: Path,
            show_progress: bool = True) -> AugmentResult:
    """Damaged copies of training clips, decoded and encoded again; a copy's text is the vector extract stored for
    its clip (``features``), unless its damage drops the text: no damage changes a transcript."""
    started = time.perf_counter()
    a = params.stage2.augment
    out_dir = Path(out_dir)
    clips = {c.id: c for c in list_clips(raw_dir)}
    labels = read_labels(raw_dir)  # a copy of a clip Stage II does not train on would be trained on
    train_ids = [i for i in split_ids(raw_dir).get("train", []) if i in clips and i in labels.index]
    copies = plan_copies(train_ids, a, params.seed)
    text_vectors = load_features(features, ("train",)).text_vectors() if copies else {}
    plan = plan_shards(params, copies, clips, text_vectors, work_dir(out_dir), alignment_path)
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task("augment", total=sum(len(plan.shards[i]) for i in plan.shards_to_run))
        done_now = run_all(plan, lambda: load_featurizer(params.extract, params.data, ("visual", "audio"),
                                                         tuned=load_tuned_encoders(alignment_path)),
                           clips, text_vectors, a, params.seed, lambda n: progress.advance(task, n))
    data, problems = assemble(plan)
    for clip, reason in problems.items():
        log.warning("augment: %s skipped: %s", clip, reason)
    if len(problems) > params.data.max_error_fraction * max(len(copies), 1):
        raise AugmentError(f"{len(problems)} of {len(copies)} damaged copies could not be made (more than "
                           f"data.max_error_fraction {params.data.max_error_fraction}): "
                           + "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:5]))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / AUGMENTED_FILE
    if len(data):
        model, norm = load_alignment(alignment_path)
        write_aligned(model, norm, data, ["train"] * len(data), target)
    else:
        target.unlink(missing_ok=True)  # no copies asked for (fraction 0): Stage II trains on clean clips
    write_text(out_dir / COPIES_FILE, copies_table(copies, problems).to_csv(index=False))
    seconds = time.perf_counter() - started
    kinds = copies_table(copies, problems)["kind"].value_counts().to_dict() if copies else {}
    log.info("augment: %d damaged copies of %d training clips (%s); %d shard(s) computed now, %.1f s", len(data),
             len(train_ids), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none", done_now, seconds)
    return AugmentResult(out_dir, len(copies), len(data), problems, done_now, seconds)
