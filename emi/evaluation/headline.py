"""What a trained pipeline scores: per labelled split and dimension, next to the oracle ceiling, and the headline
numbers runs are compared by (``reports/metrics.json``, what ``dvc metrics show`` prints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS
from emi.data.sequences import SequenceData
from emi.evaluation.ablation import RIDGE, blocks_name, cell_key
from emi.evaluation.ceiling import ceiling
from emi.evaluation.probes import LINEAR_PROBE
from emi.evaluation.robustness import MIXED
from emi.metrics import scores
from emi.utils import finite

def scored_splits(wanted: tuple[str, ...], parts: dict[str, SequenceData]) -> list[str]:
    """The wanted splits that have labels for at least two clips (Pearson needs two)."""
    return [s for s in wanted if parts[s].labels is not None and len(parts[s]) >= 2]


def split_scores(preds: dict[str, np.ndarray], parts: dict[str, SequenceData], splits: list[str], raw_dir: Path,
                 alpha: float) -> tuple[dict, str | None]:
    """``emi.metrics.scores`` per split, and on the embedded data the oracle ceiling and the fraction of it the
    model reaches; with where the ceiling's inputs came from (None on licensed data)."""
    metrics: dict = {s: scores(preds[s], parts[s].labels) for s in splits}
    ceil, source = ceiling(raw_dir, parts, splits, alpha) or (None, None)
    if ceil is not None:
        metrics["ceiling"] = ceil
        metrics["fraction_of_ceiling"] = {s: metrics[s]["pearson_mean"] / ceil[s]["pearson_mean"]
                                          for s in splits if s in ceil and ceil[s]["pearson_mean"] > 0}
    return metrics, source


def ablation_cells(modalities: tuple[str, ...], fusion: str, inputs: str,
                   temporal: bool = True) -> tuple[str, str, str]:
    """The keys of ``reports/ablation.json`` for the full model (the Stage-II settings), the linear probe and the
    full model with the other ``blocks`` (without the temporal blocks, when the model has them)."""
    def key(fusion_: str, blocks: str) -> str:
        return cell_key({"modalities": "+".join(modalities), "fusion": fusion_, "inputs": inputs, "blocks": blocks})

    return key(fusion, blocks_name(temporal)), key(LINEAR_PROBE, RIDGE), key(fusion, blocks_name(not temporal))


def headline(metrics: dict, splits: list[str], rob: pd.DataFrame, ablation: dict | None,
             cells: tuple[str, str, str], fusion: str) -> dict[str, float | None]:
    """The few numbers a run is compared by: mean Pearson and MSE per scored split, valid Pearson per emotion, the
    fraction of the oracle ceiling (embedded data), the full model over the ablation's seeds, the linear probe's
    valid mean Pearson, the full model's margins over the linear probe and over the same model with the other
    blocks (without the temporal blocks), and under the mixed damage the change of valid Pearson per fusion (mean over seeds) with the share of average fusion's loss
    the model's fusion avoids. None where a number does not exist."""
    out: dict[str, float | None] = {}
    for s in splits:
        out[f"{s}_pearson_mean"] = metrics[s]["pearson_mean"]
        out[f"{s}_mse"] = metrics[s]["mse"]
    if "valid" in splits:
        out.update({f"valid_pearson_{e}": metrics["valid"][f"pearson_{e}"] for e in EMOTIONS})
    for s, value in metrics.get("fraction_of_ceiling", {}).items():
        out[f"{s}_fraction_of_ceiling"] = value
    full, probe, blocks = ((ablation or {}).get(cell) or {} for cell in cells)
    out["ablation_full_pearson_mean"] = full.get("pearson_mean")
    out["ablation_full_pearson_sd"] = full.get("pearson_mean_sd")
    out["linear_probe_pearson_mean"] = probe.get("pearson_mean")  # the registry's default floor for a champion
    for name, other in (("linear_probe", probe), ("other_blocks", blocks)):
        out[f"margin_over_{name}"] = (full["pearson_mean"] - other["pearson_mean"]
                                      if full.get("pearson_mean") is not None and other.get("pearson_mean") is not None
                                      else None)
    mixed = rob[rob["condition"] == MIXED].set_index("fusion")
    for f in mixed.index:
        out[f"mixed_damage_delta_pearson_{f}"] = finite(mixed.loc[f, "delta_pearson"])
    out["mixed_damage_loss_avoided"] = finite(mixed.loc[fusion, "loss_avoided"]) if fusion in mixed.index else None
    return out


def plot_tables(metrics: dict, parts: dict[str, SequenceData], preds: dict[str, np.ndarray],
                splits: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-dimension Pearson (model and ceiling per split) and one predicted-vs-true row per clip and emotion."""
    per_dim = pd.DataFrame({"emotion": list(EMOTIONS)})
    for s in splits:
        per_dim[f"pearson_{s}"] = [metrics[s][f"pearson_{e}"] for e in EMOTIONS]
    for s in metrics.get("ceiling", {}):
        per_dim[f"ceiling_{s}"] = [metrics["ceiling"][s][f"pearson_{e}"] for e in EMOTIONS]
    scatter = pd.DataFrame([{"id": clip, "split": s, "emotion": e, "true": float(parts[s].labels[i, j]),
                             "predicted": float(preds[s][i, j])}
                            for s in splits for i, clip in enumerate(parts[s].ids) for j, e in enumerate(EMOTIONS)])
    return per_dim, scatter


def flat_metrics(metrics: dict, rob: pd.DataFrame, seconds: float) -> dict[str, float]:
    """Every score under a flat name as Stage II logs them (``valid_pearson_mean``), for MLflow: per split and
    dimension, the ceiling, and each robustness condition x fusion."""
    flat: dict[str, float] = {"seconds": seconds}
    for key, value in metrics.items():
        if key in ("ceiling", "fraction_of_ceiling"):
            for split, v in value.items():
                flat.update({f"ceiling_{split}_{k}": x for k, x in v.items()} if isinstance(v, dict) else
                            {f"{key}_{split}": v})
        else:
            flat.update({f"{key}_{k}": v for k, v in value.items()})
    for r in rob.to_dict(orient="records"):
        for k in ("pearson_mean", "pearson_mean_sd", "mse", "weight_V", "weight_A", "weight_T", "loss_avoided"):
            if np.isfinite(r[k]):
                flat[f"robustness_{r['condition']}_{r['fusion']}_{k}"] = r[k]
    return flat
