"""``emi stage1``: Stage I alignment over the feature store; writes the model and the aligned sequences."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emi.config import Params
from emi.features.store import features_fingerprint
from emi.paths import ALIGNED_FILE, ALIGNMENT_FILE, CHECKPOINT_FILE, work_dir
from emi.tracking.runs import tracked
from emi.train.alignment import REENCODED_DIR, save_alignment, train_alignment
from emi.train.projection import write_aligned
from emi.utils import write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class Stage1Result:
    model_path: Path
    aligned_path: Path
    metrics: dict
    epochs_run: int
    seconds: float

    def tracking(self) -> dict:
        history = pd.read_csv(self.model_path.parent / "history.csv").to_dict(orient="records")
        return {"metrics": self.metrics, "history": history,
                "artifacts": [self.model_path.parent / "metrics.json", self.model_path.parent / "history.csv"]}


@tracked("stage1")
def stage1(params: Params, features_dir: Path, model_dir: Path, aligned_dir: Path, raw_dir: Path,
           show_progress: bool = True) -> Stage1Result:
    """``raw_dir`` is read only when encoder blocks are fine-tuned (``stage1.finetune.last_k_blocks``), and its clips
    are decoded only where extract did not keep them (``emi.features.decoded``)."""
    started = time.perf_counter()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # the features' own fingerprint: new features must never resume an old run's checkpoint
    result = train_alignment(params, Path(features_dir), features_fingerprint(features_dir),
                             work_dir(model_dir) / CHECKPOINT_FILE, Path(raw_dir), show_progress)
    model_path = model_dir / ALIGNMENT_FILE
    save_alignment(model_path, result, params.stage1)
    write_json(model_dir / "metrics.json", result.metrics)
    write_text(model_dir / "history.csv", pd.DataFrame(result.history).to_csv(index=False))
    aligned_path = write_aligned(result.model, result.norm, result.data, result.splits,
                                 Path(aligned_dir) / ALIGNED_FILE)
    # the fine-tuned features are in the aligned file now
    shutil.rmtree(work_dir(model_dir) / REENCODED_DIR, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("stage I done in %.1f s: %s", seconds, result.metrics)
    return Stage1Result(model_path, aligned_path, result.metrics, result.epochs_run, seconds)
