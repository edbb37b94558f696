"""``emi evaluate``: what the trained pipeline is worth, in files a person and DVC can read. It only evaluates: the
models come from the stage2 and ablate stages (a missing one is an error naming its stage), and registering the
model in MLflow is a step of its own (``emi registry register``), so these files depend on the pipeline's inputs
alone, never on an MLflow store's history.

- scores: the saved Stage-II model re-run on the aligned features, per labelled split, next to the oracle ceiling;
- robustness (``emi.evaluation.robustness``): the models on validation clips (as extract decoded and kept them) damaged;
- the probe table, the ABAW submission, DVC plot data, figures, ``report.md`` and ``metrics.json`` (the headline).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, Params
from emi.data.dataset import split_ids
from emi.evaluation.ceiling import rendered_controls
from emi.evaluation.headline import (ablation_cells, flat_metrics, headline, plot_tables, scored_splits,
                                     split_scores)
from emi.evaluation.outputs import write_probe, write_robustness
from emi.evaluation.probes import control_probes
from emi.evaluation.robustness import measure, robustness_table, seed_models
from emi.evaluation.submission import write_submission
from emi.features.damage import DAMAGED_MODALITY
from emi.features.store import data_fingerprint
from emi.metrics import MIN_CLIPS
from emi.paths import Layout
from emi.report import plots
from emi.report.evaluation import report_markdown
from emi.tracking.runs import tracked
from emi.train.fusion import load_fusion, predict, split_data
from emi.utils import write_json, write_text

log = logging.getLogger(__name__)


class EvaluateError(RuntimeError):
    """The outputs cannot be evaluated as asked (a model missing, too few validation clips); the message says."""


@dataclass
class EvaluateResult:
    metrics: dict
    paths: dict[str, Path]
    seconds: float
    data_fingerprint: str
    robustness: pd.DataFrame = field(default_factory=pd.DataFrame)
    submission_unpredicted: list[str] = field(default_factory=list)

    def tracking(self) -> dict:
        return {"metrics": self.flat_metrics(), "artifacts": [p for p in self.paths.values() if p.suffix != ".png"] +
                [self.paths["per_dimension_png"].parent]}

    def flat_metrics(self) -> dict[str, float]:
        return flat_metrics(self.metrics, self.robustness, self.seconds)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _require(layout: Layout) -> None:
    for path, stage in ((layout.alignment_model, "stage1"), (layout.aligned_file, "stage1"),
                        (layout.fusion_model, "stage2")):
        if not path.is_file():
            raise EvaluateError(f"{path}: not found; the {stage} stage makes it (`emi {stage}`, or `dvc repro "
                                f"{stage}`)")


@tracked("evaluate")
def evaluate(params: Params, layout: Layout, show_progress: bool = True) -> EvaluateResult:
    started = time.perf_counter()
    _require(layout)
    model, saved = load_fusion(layout.fusion_model)
    parts = split_data(layout.aligned_file, layout.raw, saved.inputs)
    if len(parts["valid"]) < MIN_CLIPS:
        raise EvaluateError(f"{layout.aligned_file}: {len(parts['valid'])} labelled validation clip(s); evaluation "
                            f"needs {MIN_CLIPS} or more")
    preds = {s: predict(model, part, saved.batch_size)[0] for s, part in parts.items()}
    splits = scored_splits(params.evaluate.splits, parts)
    metrics, ceiling_source = split_scores(preds, parts, splits, layout.raw, params.evaluate.ceiling_alpha)
    paths: dict[str, Path] = {}
    predicted = pd.DataFrame(preds["test"], index=parts["test"].ids, columns=list(EMOTIONS))
    paths["submission"], sub_info = write_submission(layout.reports, split_ids(layout.raw).get("test", []), predicted,
                                                     parts["train"].labels.mean(0), params, layout.features)
    sub_info["test_source"] = (_read_json(layout.validation / "download.json") or {}).get("facts", {}).get(
        "test_clips")
    found = rendered_controls(layout.raw)
    probe = control_probes(parts["train"], parts["valid"], found[0], params.evaluate.probe_alphas) if found else None
    probe_source = found[1] if found else ("no probe table: the dataset has no generator latents "
                                           "(`_generator/latents.csv`), so there are no rendered controls to probe")

    # robustness: per seed, quality and average fusion (the Stage-II model and the ablation stage's models)
    models, model_sources = seed_models(layout.ablation_models, model, saved, params.evaluate.seeds)
    measured = measure(params, layout, parts["valid"], models, saved.batch_size, show_progress)
    rob, mixed = robustness_table(measured)
    same = measured.predictions.get(f"clean/{saved.fusion}/0")  # the saved model on the clips encoded again
    clean_diff = (float(np.abs(same[list(EMOTIONS)].to_numpy() - preds["valid"]).max()) if same is not None
                  else float("nan"))
    if clean_diff > 1e-3:
        log.warning("evaluate: re-decoded clean validation clips predict up to %.3g away from the stored features",
                    clean_diff)

    reports = layout.reports
    ablation = _read_json(reports / "ablation.json")
    cells = ablation_cells(saved.modalities, saved.fusion, saved.inputs, saved.temporal)
    paths["metrics"] = write_json(reports / "metrics.json", headline(metrics, splits, rob, ablation, cells,
                                                                      saved.fusion))
    paths["scores"] = write_json(reports / "scores.json", metrics)
    per_dim, scatter = plot_tables(metrics, parts, preds, splits)
    paths.update(plots.write_plots(reports, per_dim, scatter, rob))
    paths.update(write_robustness(reports, rob, mixed, measured, clean_diff, params.evaluate.robustness.mixed_rate))
    paths["probe"] = write_probe(reports, probe)
    data_fp, data_files = data_fingerprint(layout.raw, layout.features)
    ablation_md = reports / "ablation.md"
    ctx = {"metrics": metrics, "params": params, "splits": splits, "per_dim": per_dim, "robustness": rob,
           "damaged_modality": DAMAGED_MODALITY, "clean_diff": clean_diff, "model_sources": model_sources,
           "mixed": mixed, "probe": probe, "probe_source": probe_source, "ceiling_source": ceiling_source,
           "ablation_md": ablation_md.read_text() if ablation_md.is_file() else None, "ablation": ablation,
           "cells": cells, "stage1": _read_json(layout.stage1 / "metrics.json"),
           "manifest": _read_json(layout.features / "manifest.json"),
           "download": _read_json(layout.validation / "download.json"),
           "transcribe": _read_json(layout.validation / "transcribe.json"), "submission": sub_info,
           "data_fp": data_fp, "data_files": data_files}
    paths["report"] = write_text(reports / "report.md", report_markdown(ctx))
    seconds = time.perf_counter() - started
    log.info("evaluate done in %.1f s: %s", seconds,
             ", ".join(f"{s} mean Pearson {metrics[s]['pearson_mean']:.4f}" for s in splits))
    return EvaluateResult(metrics, paths, seconds, data_fp, rob, list(sub_info["unpredicted"]))
