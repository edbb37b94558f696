"""The ablation grid's table: one row per cell (modalities, fusion, inputs, blocks), mean ± sd over training seeds
and the paired difference to the full model."""

from __future__ import annotations

import pandas as pd

from emi.config import EMOTIONS, Stage2Params
from emi.evaluation.seeds import mean_sd, paired_difference
from emi.model import FUSIONS

MODALITY_SETS = ("V", "A", "T", "VA", "VT", "AT", "VAT")
"""The grid's modality subsets (Table 3's rows), each with the configured fusion and inputs."""
INPUTS = ("aligned", "encoder", "both")
"""Stage-II inputs: the Stage-I projections, the standardized encoder features, both concatenated."""

TEMPORAL, CLIP_MEAN, RIDGE = "TCN + BiLSTM", "clip mean", "ridge"
"""The ``blocks`` column: the paper's temporal blocks, each modality's clip-mean mapped features, the probe."""


def blocks_name(temporal: bool) -> str:
    """The ablation table's ``blocks`` column: the paper's TCN + gated BiLSTM, or each modality's clip mean."""
    return TEMPORAL if temporal else CLIP_MEAN


def ablation_grid(base: Stage2Params, modality_sets: tuple[str, ...] = MODALITY_SETS,
                  fusions: tuple[str, ...] = FUSIONS, inputs: tuple[str, ...] = INPUTS) -> list[Stage2Params]:
    """The paper's Table 3 grid around ``base``, one Stage-II configuration per cell: every modality subset with
    ``base``'s fusion and inputs, then ``base``'s modalities with each other fusion and each other Stage-II input, and
    last without the temporal blocks (what they add). ``base`` itself is the cell of its modalities."""
    full = tuple(base.modalities)
    cells = [{"modalities": tuple(m)} for m in modality_sets]
    cells += [{"modalities": full, "fusion": f} for f in fusions if f != base.fusion]
    cells += [{"modalities": full, "inputs": i} for i in inputs if i != base.inputs]
    cells += [{"modalities": full, "temporal": not base.temporal}]
    return [base.model_copy(update=c) for c in cells]


def cell_key(r: dict) -> str:
    """A row's key in ``ablation.json`` (and its MLflow metric): modalities/fusion/inputs, plus ``/clip-mean``
    for the row without temporal blocks."""
    return f"{r['modalities']}/{r['fusion']}/{r['inputs']}" + ("/clip-mean" if r["blocks"] == CLIP_MEAN else "")


def ablation_table(runs: pd.DataFrame, full: tuple[str, str, str, str]) -> pd.DataFrame:
    """One row per cell: mean over seeds of every score, sd of the mean Pearson and MSE, and the difference to the
    ``full`` cell's mean Pearson, paired by seed (mean, sd, whether it exceeds ``SIGNIFICANT_SD`` sds)."""
    keys = ["modalities", "fusion", "inputs", "blocks"]
    values = ["pearson_mean", *[f"pearson_{e}" for e in EMOTIONS], "mse"]
    table = mean_sd(runs, keys, values).drop(columns=[f"pearson_{e}_sd" for e in EMOTIONS])
    grouped = runs.groupby(keys, sort=False)
    table["seeds"] = grouped.size().to_numpy()
    table["seconds"] = grouped["seconds"].sum().to_numpy()
    table["reused"] = grouped["reused"].any().to_numpy()

    def cell(key: tuple) -> pd.DataFrame:
        return runs[(runs.modalities == key[0]) & (runs.fusion == key[1]) & (runs.inputs == key[2])
                    & (runs.blocks == key[3])].sort_values("seed")

    base = cell(full)
    diffs = []
    for key in table[keys].itertuples(index=False, name=None):
        mine = cell(key)
        diffs.append(paired_difference(mine["pearson_mean"].to_numpy(), base["pearson_mean"].to_numpy())
                     if len(base) and len(mine) == len(base) else (float("nan"), float("nan"), False))
    table["diff_vs_full"], table["diff_vs_full_sd"], table["exceeds_2sd"] = zip(*diffs) if diffs else ([], [], [])
    return table
