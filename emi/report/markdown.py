"""The evaluation report's markdown: the ablation and robustness tables and their verdicts, the probe table,
``report.md`` and the registry section (tables by ``emi.report.tables``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, SIGNIFICANT_SD
from emi.report.tables import md_table, pm


def _seeds_note(seeds: int) -> str:
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
        rows.append({"modalities": r["modalities"], "fusion": r["fusion"], "inputs": r["inputs"],
                     "r mean": pm(r["pearson_mean"], r["pearson_mean_sd"]),
                     **{f"r {e}": r[f"pearson_{e}"] for e in EMOTIONS}, "mse": pm(r["mse"], r["mse_sd"]),
                     "Δ r vs full": f"**{diff}**" if r["exceeds_2sd"] else diff})
    seeds = int(table["seeds"].max()) if len(table) else 1
    return "\n".join(["# Ablation (validation split)", "", md_table(rows), "", _seeds_note(seeds) + " Per-emotion "
                      "columns are means. Δ r vs full = row − the full model (V+A+T with the Stage-II fusion and "
                      "inputs), paired by seed. `linear probe`: ridge on the clip-mean features of all modalities "
                      "(the ones Stage II reads; a missing modality is filled with its training mean and flagged), "
                      "penalty chosen by leave-one-out on train (`evaluate.probe_alphas`); it has no training seed, "
                      "so its sd is 0 and its Δ's sd is the full model's."]) + "\n"


def robustness_verdict(table: pd.DataFrame, damaged_modality: dict[str, str]) -> list[str]:
    """The two questions the table answers, in words (means over seeds)."""
    t = table.set_index(["condition", "fusion"])
    lines = []
    for cond, m in damaged_modality.items():
        if (cond, "quality") not in t.index:
            continue
        before, after = t.loc[("clean", "quality"), f"weight_{m}"], t.loc[(cond, "quality"), f"weight_{m}"]
        verb = "falls" if after < before - 1e-6 else "does not fall"
        line = f"- **{cond}**: quality-fusion weight of {m} {verb} ({before:.3f} → {after:.3f})"
        if (cond, "average") in t.index:
            lines.append(line + "; " + _loss_words(t, cond) + ".")
        else:
            lines.append(line + ".")
    if ("mixed", "average") in t.index and ("mixed", "quality") in t.index:
        lines.append("- **mixed**: " + _loss_words(t, "mixed") + ".")
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


def _loss_words(t: pd.DataFrame, cond: str) -> str:
    dq, da = t.loc[(cond, "quality"), "delta_pearson"], t.loc[(cond, "average"), "delta_pearson"]
    avoided = t.loc[(cond, "quality"), "loss_avoided"]
    which = "quality degrades less" if dq > da else "average degrades less" if da > dq else "equal"
    words = f"mean Pearson change quality {dq:+.4f} vs average {da:+.4f}: {which}"
    words += (f" (quality avoids {avoided:.0%} of average's loss" if np.isfinite(avoided) else f" ({_no_loss(da)}")
    marked = t.loc[(cond, "quality"), "exceeds_2sd"]
    return words + (f"; the difference exceeds {SIGNIFICANT_SD:g} sd)" if marked else ")")


def robustness_markdown(table: pd.DataFrame, mixed: pd.DataFrame, damaged_modality: dict[str, str],
                        mixed_rate: float) -> str:
    return "\n".join(["# Robustness (validation split)", "", *robustness_tables(table, mixed, mixed_rate), "",
                      *robustness_verdict(table, damaged_modality), ""])


def robustness_tables(table: pd.DataFrame, mixed: pd.DataFrame, mixed_rate: float) -> list[str]:
    """The condition x fusion table (mean ± sd), the quality-vs-average comparison per damaged condition and the
    mixed condition's weights per damage kind."""
    main = [{"condition": r["condition"], "fusion": r["fusion"], "r mean": pm(r["pearson_mean"], r["pearson_mean_sd"]),
             "Δ r": pm(r["delta_pearson"], r["delta_pearson_sd"]),
             "Δ r, damaged modality dropped": pm(r["delta_pearson_dropped"], r["delta_pearson_dropped_sd"]),
             "mse": pm(r["mse"], r["mse_sd"]),
             "weight_V": r["weight_V"], "weight_A": r["weight_A"], "weight_T": r["weight_T"],
             "weight of damaged": r["weight_damaged"], "n_damaged": r["n_damaged"], "n": r["n"]}
            for r in table.to_dict(orient="records")]
    compare = []
    for r in table[(table.fusion == "quality") & (table.condition != "clean")].to_dict(orient="records"):
        avg = table[(table.condition == r["condition"]) & (table.fusion == "average")]
        if not len(avg):
            continue
        diff = pm(r["quality_minus_average"], r["quality_minus_average_sd"])
        compare.append({"condition": r["condition"], "Δ r quality": pm(r["delta_pearson"], r["delta_pearson_sd"]),
                        "Δ r average": pm(avg["delta_pearson"].iloc[0], avg["delta_pearson_sd"].iloc[0]),
                        "loss avoided": f"{r['loss_avoided']:.0%}" if np.isfinite(r["loss_avoided"]) else (
                            "– (" + _no_loss(avg["delta_pearson"].iloc[0]).split(":")[0] + ")"),
                        "Δ quality − Δ average": f"**{diff}**" if r["exceeds_2sd"] else diff})
    out = [md_table(main), "", _seeds_note(int(table["seeds"].max())), "",
           "Weights: mean fusion weight over the damaged clips (`clean`: the clips the all-clips conditions damage); "
           "`weight of damaged`: the weight of the modality each damaged clip lost. `Δ r, damaged modality dropped`: "
           "the same models with that modality marked missing on the damaged clips, i.e. what a quality scorer that "
           "gave it weight 0 would score (the same as Δ r where the damage is already a missing modality). Above "
           "Δ r, lowering the damaged modality's weight would help; below it, the damaged modality still carries "
           "information and dropping it costs more than the damage.", "",
           "### Quality vs average fusion", "", md_table(compare), "",
           "loss avoided = 1 − Δ quality / Δ average, from the mean Δ r over seeds: the fraction of average fusion's "
           "drop in mean Pearson that quality fusion does not have (100 % = no loss, 0 % = as much, < 0 = more); "
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


def probe_markdown(probe: pd.DataFrame | None, source: str, alphas: tuple[float, ...]) -> list[str]:
    if probe is None:
        return [f"{source[0].upper()}{source[1:]}.", ""]  # the reason there is none
    return ["R² on valid of a ridge regression (fit on train, penalty from "
            f"{list(alphas)} by leave-one-out) from each modality's clip-mean features (the Stage-II view) to each "
            "control the generator rendered; `VAT`: all three together. A control no modality recovers is lost in "
            f"the encoders; one recovered here but missed by the model is lost in the model. Controls: {source}.", "",
            md_table(probe, digits=3), ""]


def _seed_headline(ctx: dict, ceiling: float | None) -> list[str]:
    """The ablation's full model (mean ± sd over seeds) next to the linear probe and the valid ceiling."""
    cells = ctx.get("ablation") or {}
    full, probe = cells.get(ctx.get("full_cell")), cells.get(ctx.get("probe_cell"))
    if not full or full.get("pearson_mean") is None:
        return []

    def share(x: float) -> str:
        return f" ({x / ceiling:.0%} of the valid ceiling)" if ceiling and ceiling > 0 else ""

    line = (f"- ablation, valid: full model {pm(full['pearson_mean'], full.get('pearson_mean_sd') or float('nan'))}"
            f"{share(full['pearson_mean'])}")
    if probe and probe.get("pearson_mean") is not None:
        line += (f"; linear probe {probe['pearson_mean']:.4f}{share(probe['pearson_mean'])}: the network adds "
                 f"{full['pearson_mean'] - probe['pearson_mean']:+.4f}" +
                 (f" (past {SIGNIFICANT_SD:g} sd)" if probe.get("exceeds_2sd") else ""))
    return [line]


def report_markdown(ctx: dict) -> str:
    m, params = ctx["metrics"], ctx["params"]
    frac = m.get("fraction_of_ceiling", {})
    head = [f"**{s}** mean Pearson **{m[s]['pearson_mean']:.4f}** (MSE {m[s]['mse']:.4f}, n={m[s]['n']})"
            for s in ctx["splits"]]
    head += [f"**{frac[s]:.0%}** of the oracle ceiling on {s} ({m['ceiling'][s]['pearson_mean']:.4f})"
             for s in frac]
    out = ["# EMI evaluation report", "",
           (f"Profile `{params.profile}` · seed {params.seed} · params fingerprint `{ctx['params_fp']}` · "
            f"data fingerprint `{ctx['data_fp']}`"), "", "## Headline", "", *[f"- {h}" for h in head]]
    out += _seed_headline(ctx, m.get("ceiling", {}).get("valid", {}).get("pearson_mean"))
    unscored = [s for s in params.evaluate.splits if s not in ctx["splits"]]
    if unscored:
        out.append(f"- no labelled {' or '.join(unscored)} split (fewer than 2 labelled clips): not scored")
    if "ceiling" in m:
        out.append(f"- ceiling = oracle ridge regression (alpha {params.evaluate.ceiling_alpha:g}) on what the "
                   f"generator rendered ({ctx['ceiling_source']}), fit on train: the most a model reading these "
                   "clips can be expected to reach")
    else:
        out.append("- no ceiling: the dataset has no generator latents (`_generator/latents.csv`), i.e. it is not "
                   "the embedded synthetic one")
    out += ["", "## Per dimension", "", md_table(ctx["per_dim"]), "",
            "![per-dimension Pearson](figures/per_dimension.png)", "",
            "Predicted vs true (each point one clip):", "", "![scatter](figures/scatter.png)", ""]

    out += ["## Ablation (validation split)", ""]
    if ctx["ablation_md"]:
        body = [ln for ln in ctx["ablation_md"].splitlines() if not ln.startswith("# ")]
        out += [*body, ""]
    else:
        out += ["No ablation table found (run the ablation stage: `reports/ablation.md`).", ""]

    rob = ctx["robustness"]
    r = params.evaluate.robustness
    n_all = rob[rob.condition != "mixed"]["n_damaged"].max()
    out += ["## Robustness (validation clips, decoded again and damaged)", "",
            (f"Each all-clips condition damages {n_all} of {rob['n'].iloc[0]} validation clips (rate {r.rate:g}, "
             f"chosen with the seed); `mixed` damages {r.mixed_rate:.0%} of them, each with one damage drawn at "
             f"random (seeded): occluded face = box {list(r.occlusion_box)} of the frame blacked out; noisy audio = "
             f"white noise at {r.noise_snr_db:g} dB SNR; missing audio / text = the modality removed (masked). "
             "Pearson and MSE are over all validation clips. Models other than the registered one: "
             f"{'; '.join(ctx['model_sources']) or 'none'}."), "",
            *robustness_tables(rob, ctx["mixed"], r.mixed_rate), "", *robustness_verdict(rob, ctx["damaged_modality"]),
            "", f"Check: clean re-decoded predictions vs the stored features, max |Δ| = {ctx['clean_diff']:.2e}.", "",
            "![fusion weights per condition](figures/weights.png)", ""]
    out += ["## Probes: where information is lost", "",
            *probe_markdown(ctx["probe"], ctx["probe_source"], params.evaluate.probe_alphas)]

    s1 = ctx["stage1"]
    out += ["## Stage I alignment (validation retrieval)", ""]
    if s1:
        rows = [{"direction": d, **{k: s1.get(f"{d}_{k}", float("nan")) for k in
                                     ("recall@1", "chance@1", "recall@5", "chance@5")}, "pairs": s1.get(f"{d}_pairs")}
                for d in ("v2t", "a2t")]
        out += [md_table(pd.DataFrame(rows)), "", f"Temperature {s1.get('temperature', float('nan')):.4g}.", ""]
    else:
        out += ["No Stage I metrics found.", ""]

    manifest = ctx["manifest"] or {}
    encoders = manifest.get("encoders", [])
    random = manifest.get("random_init")
    out += ["## Encoders", ""]
    if random:
        out.append(f"**Random-init (untrained) encoders: {', '.join(random)}** — their modality carries no "
                   "pretrained knowledge; scores are not comparable with the paper.")
    elif manifest:
        out.append("Random-init: none: all encoders pretrained.")
    else:
        out.append("No features manifest found: encoders unknown.")
    out += [f"- `{e['role']}`: {e['kind']} {e['name']} ({e['source']}{', RANDOM INIT' if e.get('random_init') else ''})"
            for e in encoders] + [""]

    out += ["## Dataset", ""]
    dl, tr = ctx["download"], ctx["transcribe"]
    if dl and dl.get("facts"):
        f = dl["facts"]
        out.append(f"- clips per split: {f.get('rows_per_split')}; readable {f.get('readable_clips')}; without "
                   f"audio track {f.get('clips_without_audio_track')}")
        if "duration_s" in f:
            out.append(f"- duration {f['duration_s'].get('min')}–{f['duration_s'].get('max')} s "
                       f"(total {f['duration_s'].get('total', 0):.0f} s); resolutions {f.get('resolutions')}; "
                       f"fps {f.get('fps')}; source {f.get('source', {}).get('source', '?')}")
    if tr and tr.get("facts"):
        f = tr["facts"]
        wer = f"WER {f['wer']:.3f} over {f.get('wer_clips')} clips" if f.get("wer") is not None else "WER n/a"
        out.append(f"- transcripts: {wer}; status {f.get('status_counts')}; empty-text rate "
                   f"{f.get('empty_text_rate')}; {f.get('asr', '')}")
    if not (dl or tr):
        out.append("- no validation reports found")
    sub = ctx["submission"]
    out += ["", "## Submission", ""]
    if sub.get("test_source"):
        out.append(f"Test clips: {sub['test_source']}.")
    if not sub["test_clips"]:
        out.append("No test split (`test_split.csv` absent or empty): `submission.csv` holds the ABAW header alone.")
    else:
        out.append(f"`submission.csv`: {sub['rows']} rows for {sub['test_clips']} test clips in `test_split.csv` "
                   "order, ABAW header, `Filename` = the clip's file stem.")
        if sub["unpredicted"]:
            rule = ("carry the mean training label" if sub["rule"] == "mean" else "are left out of the file")
            out += [f"{len(sub['unpredicted'])} test clip(s) could not be read (within `data.max_error_fraction`) "
                    f"and {rule} (`evaluate.unreadable_test: {sub['rule']}`):", ""]
            out += [f"- `{i}`: {reason}" for i, reason in sub["unpredicted"].items()]
    out += ["", "## Provenance", "", f"- params fingerprint `{ctx['params_fp']}` (profile `{params.profile}`)",
            f"- data fingerprint `{ctx['data_fp']}` over " + ", ".join(f"{k} `{v[:12]}`" for k, v in
                                                                       ctx["data_files"].items()), ""]
    return "\n".join(out)


def registry_markdown(decision: dict) -> str:
    return (f"\n## Model registry\n\n- registered `{decision['model']}` version {decision['version']} "
            f"(alias `challenger`)\n- champion: version {decision['champion_version']} — {decision['reason']}\n"
            f"- compare: `emi registry compare`\n")
