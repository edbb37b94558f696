"""The robustness tables in markdown and what they say in words: does the damaged modality's weight fall, how
much of average fusion's loss the model's fusion avoids, and where the mixed condition's loss comes from."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi.config import SIGNIFICANT_SD
from emi.evaluation.seeds import model_fusion
from emi.report.ablation import seeds_note
from emi.report.tables import md_table, pm


def robustness_verdict(table: pd.DataFrame, damaged_modality: dict[str, str]) -> list[str]:
    """The two questions the table answers, in words (means over seeds)."""
    t, q = table.set_index(["condition", "fusion"]), model_fusion(table)
    lines = []
    for cond, m in damaged_modality.items():
        if (cond, q) not in t.index:
            continue
        before, after = t.loc[("clean", q), f"weight_{m}"], t.loc[(cond, q), f"weight_{m}"]
        verb = "falls" if after < before - 1e-6 else "does not fall"
        line = f"- **{cond}**: {q}-fusion weight of {m} {verb} ({before:.3f} → {after:.3f})"
        if (cond, "average") in t.index and q != "average":
            lines.append(line + "; " + _loss_words(t, cond, q) + ".")
        else:
            lines.append(line + ".")
    if ("mixed", "average") in t.index and ("mixed", q) in t.index and q != "average":
        lines.append("- **mixed**: " + _loss_words(t, "mixed", q) + ".")
    return lines


def mixed_attribution(per_kind: pd.DataFrame) -> list[str]:
    """Where the mixed condition's loss comes from, in words: the share of each fusion's loss (summed over the
    damage kinds' separate losses) from damage the modality mask already says (``masked`` kinds: a missing
    modality has weight 0 under both fusions, the weights have nothing to lower), and what dropping the damaged
    modality on the other clips would change."""
    lines = []
    for fusion, rows in per_kind.groupby("fusion", sort=False):
        rows = rows[rows["n"] > 0]
        total = rows["delta_pearson_kind"].sum()
        if not len(rows) or total >= 0:
            continue
        masked = rows[rows["masked"]]["delta_pearson_kind"].sum()
        seen = rows[~rows["masked"]]
        gain = seen["delta_pearson_kind_dropped"].sum() - seen["delta_pearson_kind"].sum()
        kinds = ", ".join(rows[rows["masked"]]["damage"])
        lines.append(f"- {fusion}: the kinds' separate losses sum to {total:+.4f}; {masked / total:.0%} of it comes "
                     f"from missing modalities ({kinds}), where the fusion weight of the lost modality is already "
                     f"0. Dropping the damaged modality on the other damaged clips instead would change mean "
                     f"Pearson by {gain:+.4f} (summed over those kinds): " + (
                         "the damaged modality still carries information, so a lower weight cannot recover the "
                         "loss" if gain <= 0 else "a scorer that lowered the damaged modality's weight could gain up "
                         "to that") + ".")
    return lines


def _no_loss(delta_average: float) -> str:
    """Why a condition has no ``loss_avoided``."""
    if delta_average >= 0:
        return "average does not lose: no loss to avoid"
    return f"average's loss is within {SIGNIFICANT_SD:g} sd of its seed noise: no loss to avoid"


def _loss_words(t: pd.DataFrame, cond: str, q: str) -> str:
    dq, da = t.loc[(cond, q), "delta_pearson"], t.loc[(cond, "average"), "delta_pearson"]
    avoided = t.loc[(cond, q), "loss_avoided"]
    which = f"{q} degrades less" if dq > da else "average degrades less" if da > dq else "equal"
    words = f"mean Pearson change {q} {dq:+.4f} vs average {da:+.4f}: {which}"
    words += (f" ({q} avoids {avoided:.0%} of average's loss" if np.isfinite(avoided) else f" ({_no_loss(da)}")
    marked = t.loc[(cond, q), "exceeds_2sd"]
    return words + (f"; the difference exceeds {SIGNIFICANT_SD:g} sd)" if marked else ")")


def robustness_markdown(table: pd.DataFrame, mixed: pd.DataFrame, damaged_modality: dict[str, str],
                        mixed_rate: float) -> str:
    return "\n".join(["# Robustness (validation split)", "", *robustness_tables(table, mixed, mixed_rate), "",
                      *robustness_verdict(table, damaged_modality), ""])


def robustness_tables(table: pd.DataFrame, mixed: pd.DataFrame, mixed_rate: float) -> list[str]:
    """The condition x fusion table (mean ± sd), the model's fusion vs average per damaged condition and the
    mixed condition's weights per damage kind."""
    q = model_fusion(table)
    main = [{"condition": r["condition"], "fusion": r["fusion"], "r mean": pm(r["pearson_mean"], r["pearson_mean_sd"]),
             "Δ r": pm(r["delta_pearson"], r["delta_pearson_sd"]),
             "Δ r, damaged modality dropped": pm(r["delta_pearson_dropped"], r["delta_pearson_dropped_sd"]),
             "mse": pm(r["mse"], r["mse_sd"]),
             "weight_V": r["weight_V"], "weight_A": r["weight_A"], "weight_T": r["weight_T"],
             "weight of damaged": r["weight_damaged"], "n_damaged": r["n_damaged"], "n": r["n"]}
            for r in table.to_dict(orient="records")]
    compare = []
    for r in table[(table.fusion == q) & (table.condition != "clean")].to_dict(orient="records"):
        avg = table[(table.condition == r["condition"]) & (table.fusion == "average")]
        if not len(avg) or q == "average":
            continue
        diff = pm(r["fusion_minus_average"], r["fusion_minus_average_sd"])
        compare.append({"condition": r["condition"], f"Δ r {q}": pm(r["delta_pearson"], r["delta_pearson_sd"]),
                        "Δ r average": pm(avg["delta_pearson"].iloc[0], avg["delta_pearson_sd"].iloc[0]),
                        "loss avoided": f"{r['loss_avoided']:.0%}" if np.isfinite(r["loss_avoided"]) else (
                            "– (" + _no_loss(avg["delta_pearson"].iloc[0]).split(":")[0] + ")"),
                        f"Δ {q} − Δ average": f"**{diff}**" if r["exceeds_2sd"] else diff})
    out = [md_table(main), "", seeds_note(int(table["seeds"].max())), "",
           "Weights: mean fusion weight over the damaged clips (`clean`: the clips the all-clips conditions damage); "
           "`weight of damaged`: the weight of the modality each damaged clip lost. `Δ r, damaged modality dropped`: "
           "the same models with that modality marked missing on the damaged clips, i.e. what a quality scorer that "
           "gave it weight 0 would score (the same as Δ r where the damage is already a missing modality). Above "
           "Δ r, lowering the damaged modality's weight would help; below it, the damaged modality still carries "
           "information and dropping it costs more than the damage.", "",
           f"### {q.capitalize()} vs average fusion", "", md_table(compare), "",
           f"loss avoided = 1 − Δ {q} / Δ average, from the mean Δ r over seeds: the fraction of average fusion's "
           f"drop in mean Pearson that {q} fusion does not have (100 % = no loss, 0 % = as much, < 0 = more); "
           f"– when average fusion does not lose, or its loss is within {SIGNIFICANT_SD:g} sd (over seeds) of 0."]
    if len(mixed):
        rows = [{"damage": r["damage"], "modality": r["modality"], "fusion": r["fusion"], "clips": r["n"],
                 "weight clean": pm(r["weight_clean"], r["weight_clean_sd"], 3),
                 "weight damaged": pm(r["weight_damaged"], r["weight_damaged_sd"], 3),
                 "Δ r from these clips": pm(r["delta_pearson_kind"], r["delta_pearson_kind_sd"]),
                 "Δ r, modality dropped": pm(r["delta_pearson_kind_dropped"], r["delta_pearson_kind_dropped_sd"])}
                for r in mixed.to_dict(orient="records")]
        out += ["", f"### Mixed condition: {mixed_rate:.0%} of the clips, one random damage each", "",
                "Per damage kind, on the clips that got it: the damaged modality's weight clean and damaged; the "
                "change in mean Pearson (all clips) when only these clips are damaged and the rest are clean; and "
                "the same with their damaged modality dropped.", "",
                md_table(rows), "", *mixed_attribution(mixed)]
    return out
