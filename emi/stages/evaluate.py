"""``emi evaluate``: what the trained pipeline is worth, in files a person and DVC can read; then the registry.

- metrics: the saved Stage-II model re-run on the aligned features (this proves the saved file), per-dimension and
  mean Pearson and MSE per labelled split, next to the oracle ceiling of the embedded dataset;
- robustness (``emi.evaluation.robustness``): the same models on validation clips decoded again and damaged;
- the ABAW submission file for the test ids, DVC plot data, figures and ``report.md``;
- last, once every output is written: the model registered in MLflow and the promotion decision.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, Params, Stage2Params
from emi.data.dataset import list_clips, split_ids, transcript_texts
from emi.features.store import data_fingerprint, skipped_clips
from emi.encoders.registry import load_featurizer
from emi.evaluation.ceiling import ceiling, rendered_controls
from emi.metrics import scores
from emi.paths import Layout
from emi.report import plots
from emi.report.markdown import registry_markdown, report_markdown, robustness_markdown
from emi.evaluation.probes import LINEAR_PROBE, PROBE_COLUMNS, control_probes
from emi.evaluation.robustness import DAMAGED_MODALITY, COMPARED_FUSIONS, MIXED, robustness, robustness_table
from emi.evaluation.submission import submission
from emi.tracking.registry import publish
from emi.tracking.runs import tracked
from emi.train.projection import load_tuned_encoders
from emi.train.fusion import load_fusion, predict, split_data, train_model, variant_name, with_copies
from emi.data.sequences import SequenceData
from emi.utils import finite, fingerprint, write_json, write_text

log = logging.getLogger(__name__)


class EvaluateError(RuntimeError):
    """The outputs cannot be evaluated as asked (e.g. too few validation clips); the message names them."""


@dataclass
class EvaluateResult:
    metrics: dict
    paths: dict[str, Path]
    seconds: float
    data_fingerprint: str
    params_fingerprint: str
    robustness: pd.DataFrame = field(default_factory=pd.DataFrame)
    submission_unpredicted: list[str] = field(default_factory=list)
    registry: dict | None = None

    def tracking(self) -> dict:
        return {"metrics": self.flat_metrics(), "artifacts": [p for p in self.paths.values() if p.suffix != ".png"] +
                [self.paths["per_dimension_png"].parent]}

    def flat_metrics(self) -> dict[str, float]:
        """Flat metric names as Stage II logs them (``valid_pearson_mean``)."""
        flat: dict[str, float] = {"seconds": self.seconds}
        for key, value in self.metrics.items():
            if key in ("ceiling", "fraction_of_ceiling"):
                for split, v in value.items():
                    flat.update({f"ceiling_{split}_{k}": x for k, x in v.items()} if isinstance(v, dict) else
                                {f"{key}_{split}": v})
            else:
                flat.update({f"{key}_{k}": v for k, v in value.items()})
        for r in self.robustness.to_dict(orient="records"):
            for k in ("pearson_mean", "pearson_mean_sd", "mse", "weight_V", "weight_A", "weight_T", "loss_avoided"):
                if np.isfinite(r[k]):
                    flat[f"robustness_{r['condition']}_{r['fusion']}_{k}"] = r[k]
        return flat


def headline(metrics: dict, splits: list[str], rob: pd.DataFrame) -> dict[str, float | None]:
    """The few numbers a run is compared by: mean Pearson and MSE per scored split, the fraction of the oracle
    ceiling (embedded data), per fusion the mean change of valid Pearson over the damage conditions and the
    fraction of average fusion's loss quality fusion avoids under mixed damage (both means over the seeds)."""
    out: dict[str, float] = {}
    for s in splits:
        out[f"{s}_pearson_mean"] = metrics[s]["pearson_mean"]
        out[f"{s}_mse"] = metrics[s]["mse"]
    for s, value in metrics.get("fraction_of_ceiling", {}).items():
        out[f"{s}_fraction_of_ceiling"] = value
    damaged = rob[rob["condition"] != "clean"]
    for fusion, delta in damaged.groupby("fusion", sort=False)["delta_pearson"].mean().items():
        out[f"robustness_{fusion}_mean_delta_pearson"] = float(delta)
    mixed = rob[(rob["condition"] == MIXED) & (rob["fusion"] == "quality")]["loss_avoided"]
    out["robustness_mixed_loss_avoided"] = finite(mixed.iloc[0]) if len(mixed) else None  # None: no loss to avoid
    return out


def scored_splits(params: Params, parts: dict[str, SequenceData]) -> list[str]:
    return [s for s in params.evaluate.splits if parts[s].labels is not None and len(parts[s]) >= 2]


def _plot_tables(metrics: dict, ceil: dict | None, parts: dict[str, SequenceData], preds: dict[str, np.ndarray],
                 splits: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-dimension Pearson (model and ceiling per split) and one predicted-vs-true row per clip and emotion."""
    per_dim = pd.DataFrame({"emotion": list(EMOTIONS)})
    for s in splits:
        per_dim[f"pearson_{s}"] = [metrics[s][f"pearson_{e}"] for e in EMOTIONS]
    for s in (ceil or {}):
        per_dim[f"ceiling_{s}"] = [ceil[s][f"pearson_{e}"] for e in EMOTIONS]
    scatter = pd.DataFrame([{"id": clip, "split": s, "emotion": e, "true": float(parts[s].labels[i, j]),
                             "predicted": float(preds[s][i, j])}
                            for s in splits for i, clip in enumerate(parts[s].ids) for j, e in enumerate(EMOTIONS)])
    return per_dim, scatter


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _seed_models(params: Params, layout: Layout, model, saved: Stage2Params, parts: dict) -> tuple[dict, list[str]]:
    """Quality and average fusion per training seed i < ``evaluate.seeds`` (seed ``seed + i``) for the robustness
    comparison: quality i = 0 is the saved Stage-II model; the others are the ablation stage's V+A+T cells
    (``models/ablation``), else trained here with the saved model's settings (they differ in fusion and seed)."""
    models: dict[str, list] = {fusion: [] for fusion in COMPARED_FUSIONS}
    sources = []
    for i in range(params.evaluate.seeds):
        for fusion in models:
            if fusion == saved.fusion and i == 0:
                models[fusion].append((model, saved.inputs))
                continue
            path = layout.ablation_models / f"{variant_name('VAT', fusion, saved.inputs, i)}.pt"
            if path.is_file():
                m, p = load_fusion(path)
                models[fusion].append((m, p.inputs))
                sources.append(f"{fusion} seed {i}: `{path}`")
                continue
            p = saved.model_copy(update={"fusion": fusion})
            t0 = time.perf_counter()
            train = with_copies(parts["train"], layout.augmented_file, p.inputs)
            m, _, _ = train_model(p, params.seed + i, train, parts["valid"], None, log_epochs=False)
            log.info("evaluate: %s-fusion model (seed %d) trained in %.1f s", fusion, i, time.perf_counter() - t0)
            models[fusion].append((m, p.inputs))
            sources.append(f"{fusion} seed {i}: trained here with the saved model's settings")
    return models, sources


def _probes(params: Params, raw_dir: Path, parts: dict) -> tuple[pd.DataFrame | None, str]:
    """The control probe table (embedded data), or None and why not."""
    found = rendered_controls(raw_dir)
    if found is None:
        return None, ("no probe table: the dataset has no generator latents (`_generator/latents.csv`), so there "
                      "are no rendered controls to probe for")
    controls, source = found
    table = control_probes(parts["train"], parts["valid"], controls, params.evaluate.probe_alphas)
    return table, source


@tracked("evaluate")
def evaluate(params: Params, layout: Layout, register: bool = True, show_progress: bool = True) -> EvaluateResult:
    started = time.perf_counter()
    raw_dir, reports_dir = layout.raw, layout.reports
    model_path, alignment_path, aligned = layout.fusion_model, layout.alignment_model, layout.aligned_file
    for path in (model_path, alignment_path, aligned):
        if not path.is_file():
            raise EvaluateError(f"{path}: not found (run the earlier stages first)")

    # ---- metrics: the saved model, re-run
    model, saved = load_fusion(model_path)
    inputs = saved.inputs
    parts = split_data(aligned, raw_dir, inputs)
    if len(parts["valid"]) < 2:
        raise EvaluateError(f"{aligned}: {len(parts['valid'])} labelled validation clip(s); evaluation needs 2 or more")
    batch = params.stage2.batch_size
    preds = {s: predict(model, part, batch)[0] for s, part in parts.items()}
    splits = scored_splits(params, parts)
    metrics: dict = {s: scores(preds[s], parts[s].labels) for s in splits}
    ceil, ceiling_source = ceiling(raw_dir, parts, splits, params.evaluate.ceiling_alpha) or (None, None)
    if ceil is not None:
        metrics["ceiling"] = ceil
        metrics["fraction_of_ceiling"] = {s: metrics[s]["pearson_mean"] / ceil[s]["pearson_mean"]
                                          for s in splits if s in ceil and ceil[s]["pearson_mean"] > 0}
    phases = {"metrics": time.perf_counter() - started}

    # ---- submission (checked before the slow part: a missing test clip fails fast)
    # Hume-Vidmimic2's labelled data ships as train + valid: then the file holds the ABAW header alone, so that
    # `dvc repro` finds every declared output and the report says why it is empty
    test_ids = split_ids(raw_dir).get("test", [])
    predicted = pd.DataFrame(preds["test"], index=parts["test"].ids, columns=list(EMOTIONS))
    table, unpredicted = submission(test_ids, predicted, parts["train"].labels.mean(0),
                                    params.data.max_error_fraction, params.evaluate.unreadable_test)
    paths = {"submission": write_text(reports_dir / "submission.csv", table.to_csv(index=False, float_format="%.6f"))}
    reasons = skipped_clips(layout.features)
    sub_info = {"rows": len(table), "test_clips": len(set(test_ids)), "rule": params.evaluate.unreadable_test,
                "unpredicted": {i: reasons.get(i, "not in the feature index") for i in unpredicted},
                "test_source": (_read_json(layout.validation / "download.json") or {}).get("facts", {}).get(
                    "test_clips")}

    # ---- probes: what each modality's clip-mean features carry of the rendered controls (embedded data)
    probe, probe_source = _probes(params, raw_dir, parts)
    phases["probes"] = time.perf_counter() - started - sum(phases.values())

    # ---- robustness: per seed, quality and average fusion (seed 0 quality: the saved model)
    models, model_sources = _seed_models(params, layout, model, saved, parts)
    phases["seed_models"] = time.perf_counter() - started - sum(phases.values())
    valid = parts["valid"]
    by_id = {c.id: c for c in list_clips(raw_dir)}
    featurizer = load_featurizer(params.extract, params.data, tuned=load_tuned_encoders(alignment_path))
    measured = robustness(featurizer, params.evaluate.robustness, params.seed, valid,
                          [by_id[i] for i in valid.ids], transcript_texts(layout.transcripts_table), alignment_path,
                          models, batch, show_progress)
    rob, mixed = robustness_table(measured)
    # the saved model's clean re-decoded predictions (NaN when its fusion is not one the comparison runs)
    same = measured.predictions.get(f"clean/{saved.fusion}/0")
    clean_diff = float(np.abs(same[list(EMOTIONS)].to_numpy() - preds["valid"]).max()) if same is not None and len(
        valid) else float("nan")
    phases["robustness"] = time.perf_counter() - started - sum(phases.values())
    if clean_diff > 1e-3:
        log.warning("evaluate: re-decoded clean validation clips predict up to %.3g away from the stored features",
                    clean_diff)

    # ---- files
    reports_dir.mkdir(parents=True, exist_ok=True)
    # DVC's metrics file (what `dvc exp show` / `dvc metrics diff` put in columns) holds the headline numbers; the
    # per-dimension scores and the ceiling go to scores.json, the robustness table to robustness.json
    paths["metrics"] = write_json(reports_dir / "metrics.json", headline(metrics, splits, rob))
    paths["scores"] = write_json(reports_dir / "scores.json", metrics)
    per_dim, scatter = _plot_tables(metrics, ceil, parts, preds, splits)
    paths.update(plots.write_plots(reports_dir, per_dim, scatter, rob))
    paths["robustness_csv"] = write_text(reports_dir / "robustness.csv", rob.to_csv(index=False, float_format="%.6f"))
    paths["robustness_seeds_csv"] = write_text(reports_dir / "robustness_seeds.csv",
                                               measured.runs.to_csv(index=False, float_format="%.6f"))
    r = params.evaluate.robustness
    paths["robustness_md"] = write_text(reports_dir / "robustness.md",
                                        robustness_markdown(rob, mixed, DAMAGED_MODALITY, r.mixed_rate))
    # DVC metrics want a mapping, not a list (and JSON numbers: an undefined value is null)
    rob_json = {f"{row['condition']}/{row['fusion']}": {k: finite(v) for k, v in row.items()
                                                        if k not in ("condition", "fusion")}
                for row in rob.to_dict(orient="records")}
    rob_json.update({f"mixed_weights/{row['damage']}/{row['fusion']}": {
        k: finite(v) for k, v in row.items() if k not in ("damage", "fusion")}
        for row in mixed.to_dict(orient="records")})
    rob_json["check"] = {"clean_vs_stored_max_abs_diff": finite(clean_diff)}
    paths["robustness_json"] = write_json(reports_dir / "robustness.json", rob_json)

    # a declared DVC output: without rendered controls (licensed data) the header alone, the report says why
    paths["probe"] = write_text(reports_dir / "probe.csv", (probe if probe is not None else pd.DataFrame(
        columns=PROBE_COLUMNS)).to_csv(index=False, float_format="%.6f"))

    params_fp = fingerprint(params.model_dump(mode="json"))
    data_fp, data_files = data_fingerprint(raw_dir, layout.features)
    ablation_md = reports_dir / "ablation.md"
    ctx = {"metrics": metrics, "params": params, "splits": splits, "per_dim": per_dim, "robustness": rob,
           "damaged_modality": DAMAGED_MODALITY, "clean_diff": clean_diff, "model_sources": model_sources,
           "mixed": mixed, "probe": probe, "probe_source": probe_source,
           "ceiling_source": ceiling_source, "ablation_md": ablation_md.read_text() if ablation_md.is_file() else None,
           "stage1": _read_json(layout.stage1 / "metrics.json"), "ablation": _read_json(reports_dir / "ablation.json"),
           "full_cell": f"V+A+T/{saved.fusion}/{saved.inputs}", "probe_cell": f"V+A+T/{LINEAR_PROBE}/{saved.inputs}",
           "manifest": _read_json(layout.features / "manifest.json"),
           "download": _read_json(layout.validation / "download.json"),
           "transcribe": _read_json(layout.validation / "transcribe.json"), "submission": sub_info,
           "params_fp": params_fp, "data_fp": data_fp, "data_files": data_files}
    paths["report"] = write_text(reports_dir / "report.md", report_markdown(ctx))
    seconds = time.perf_counter() - started
    log.info("evaluate done in %.1f s (%s): %s", seconds, ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()),
             ", ".join(f"{s} mean Pearson {metrics[s]['pearson_mean']:.4f}" for s in splits))
    result = EvaluateResult(metrics, paths, seconds, data_fp, params_fp, rob, unpredicted)

    # ---- the registry, last: a version is registered only once every output above is written
    if register:
        result.registry = publish(params, alignment_path, model_path, result.flat_metrics(), data_fp,
                                  reports_dir / "registry.json")
        paths["registry"] = reports_dir / "registry.json"
        write_text(paths["report"], paths["report"].read_text() + registry_markdown(result.registry))
    return result
