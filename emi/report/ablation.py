"""The ablation table in markdown: mean ± sd over seeds, each row's difference to the full model."""

from __future__ import annotations

import pandas as pd

from emi.config import EMOTIONS, SIGNIFICANT_SD
from emi.report.tables import md_table, pm


def seeds_note(seeds: int) -> str:
    if seeds > 1:
        return (f"Mean ± sd over {seeds} Stage-II trainings (seeds `seed` … `seed + {seeds - 1}`; seed 0 is the "
                f"registered Stage-II model). **Bold** marks a difference whose mean exceeds {SIGNIFICANT_SD:g} sd of "
                "the paired per-seed difference (sd over seeds of the per-seed difference).")
    return "One Stage-II training per cell (`evaluate.seeds: 1`): no sd, so no difference is marked."


def ablation_markdown(table: pd.DataFrame) -> str:
    """The grid with mean ± sd over seeds and each row's difference to the full model (bold past 2 sd)."""
    rows = []
    for r in table.to_dict(orient="records"):
        diff = pm(r["diff_vs_full"], r["diff_vs_full_sd"])
        rows.append({"modalities": r["modalities"], "fusion": r["fusion"], "inputs": r["inputs"], "blocks": r["blocks"],
                     "r mean": pm(r["pearson_mean"], r["pearson_mean_sd"]),
                     **{f"r {e}": r[f"pearson_{e}"] for e in EMOTIONS}, "mse": pm(r["mse"], r["mse_sd"]),
                     "Δ r vs full": f"**{diff}**" if r["exceeds_2sd"] else diff})
    seeds = int(table["seeds"].max()) if len(table) else 1
    return "\n".join(["# Ablation (validation split)", "", md_table(rows), "", seeds_note(seeds) + " Per-emotion "
                      "columns are means. Δ r vs full = row − the full model (V+A+T with the Stage-II fusion, "
                      "inputs and blocks), paired by seed. `clip mean`: the TCN and gated BiLSTM replaced by each "
                      "modality's clip-mean mapped features (same fusion and head). `linear probe`: ridge on the clip-mean features of all modalities "
                      "(the ones Stage II reads; a missing modality is filled with its training mean and flagged), "
                      "penalty chosen by leave-one-out on train (`evaluate.probe_alphas`); it has no training seed, "
                      "so its sd is 0 and its Δ's sd is the full model's."]) + "\n"
