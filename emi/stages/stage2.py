"""``emi stage2``: train the Stage-II model on the aligned features; writes the model, predictions and metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import Params
from emi.paths import CHECKPOINT_FILE, FUSION_FILE, work_dir
from emi.tracking.runs import tracked
from emi.train.fusion import (Stage2Error, dims_of, score_model, prediction_table, save_model, split_data,
                              train_model, training_data_key, with_copies)
from emi.utils import write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class Stage2Result:
    model_path: Path
    metrics: dict
    predictions: pd.DataFrame
    epochs_run: int
    seconds: float

    def tracking(self) -> dict:
        folder = self.model_path.parent
        history = pd.read_csv(folder / "history.csv").to_dict(orient="records")
        return {"metrics": {**self.metrics, "seconds": self.seconds}, "history": history,
                "artifacts": [folder / "metrics.json", folder / "history.csv", folder / "predictions.csv"]}


@tracked("stage2")
def stage2(params: Params, aligned: Path, raw_dir: Path, model_dir: Path, augmented: Path | None = None,
           show_progress: bool = True) -> Stage2Result:
    """Train on the training split plus its damaged copies in ``augmented`` (``emi augment``; none when absent)."""
    p = params.stage2
    started = time.perf_counter()
    parts = split_data(aligned, raw_dir, p.inputs)
    if len(parts["train"]) < 2:
        raise Stage2Error(f"stage II needs labelled training clips; found {len(parts['train'])} in {raw_dir}")
    train = with_copies(parts["train"], augmented, p.inputs)
    if len(train) > len(parts["train"]):
        log.info("stage II: %d training clips and %d damaged copies", len(parts["train"]),
                 len(train) - len(parts["train"]))
    model_dir.mkdir(parents=True, exist_ok=True)
    model, history, ran = train_model(p, params.seed, train, parts["valid"], work_dir(model_dir) / CHECKPOINT_FILE,
                                      show_progress, training_data_key(aligned, augmented, raw_dir))
    metrics = {f"valid_{k}": v for k, v in score_model(model, parts["valid"], p.batch_size).items()} if len(
        parts["valid"]) > 1 else {}
    metrics.update({"train_loss": history[-1]["train_loss"], "epochs": len(history),
                    "modalities": "".join(p.modalities), "fusion": p.fusion})
    model_path = model_dir / FUSION_FILE
    save_model(model_path, model, p, dims_of(parts["train"]))
    predictions = prediction_table(model, parts, p.batch_size)
    write_text(model_dir / "predictions.csv", predictions.to_csv(index=False))
    write_text(model_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    write_json(model_dir / "metrics.json", metrics)
    seconds = time.perf_counter() - started
    log.info("stage II done in %.1f s: valid mean Pearson %.4f", seconds, metrics.get("valid_pearson_mean", np.nan))
    return Stage2Result(model_path, metrics, predictions, ran, seconds)
