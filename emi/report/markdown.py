"""Markdown rendering: the one table renderer every report uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from emi.config import EMOTIONS


def _cell(value, fmt: str | None, digits: int) -> str:
    if fmt is not None and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return format(value, fmt)
    if isinstance(value, (float, np.floating)):
        return "–" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: pd.DataFrame | Sequence[Mapping], digits: int = 4, formats: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None, columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table: floats with ``digits`` decimals (NaN as –), ``formats`` per column (format spec),
    ``headers`` renames columns for display; ``columns`` orders (and, for no rows, names) them."""
    if isinstance(rows, pd.DataFrame):
        frame = rows if columns is None else rows[list(columns)]
    else:  # object dtype: an int column with a None stays ints, not floats
        frame = pd.DataFrame(list(rows), columns=list(columns) if columns else None, dtype=object)
    formats, headers = formats or {}, headers or {}
    cols = list(frame.columns)
    lines = ["| " + " | ".join(headers.get(c, str(c)) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, formats.get(c), digits) for c, v in zip(cols, row)) + " |")
    return "\n".join(lines)


def ablation_markdown(table: pd.DataFrame) -> str:
    cols = ["modalities", "fusion", "inputs", "pearson_mean", *[f"pearson_{e}" for e in EMOTIONS], "mse"]
    return "\n".join(["# Ablation (validation split)", "", md_table(
        table, columns=cols, headers={c: c.replace("pearson_", "r ") for c in cols})]) + "\n"


def robustness_verdict(table: pd.DataFrame, damaged_modality: dict[str, str]) -> list[str]:
    """The two questions the table answers, in words."""
    t = table.set_index(["condition", "fusion"])
    lines = []
    for cond, m in damaged_modality.items():
        if (cond, "quality") not in t.index:
            continue
        before, after = t.loc[("clean", "quality"), f"weight_{m}"], t.loc[(cond, "quality"), f"weight_{m}"]
        verb = "falls" if after < before - 1e-6 else "does not fall"
        line = f"- **{cond}**: quality-fusion weight of {m} {verb} ({before:.3f} → {after:.3f})"
        if (cond, "average") in t.index:
            dq, da = t.loc[(cond, "quality"), "delta_pearson"], t.loc[(cond, "average"), "delta_pearson"]
            which = "quality degrades less" if dq > da else "average degrades less" if da > dq else "equal"
            line += f"; mean Pearson change quality {dq:+.4f} vs average {da:+.4f}: {which}"
        lines.append(line + ".")
    return lines


def robustness_markdown(table: pd.DataFrame, damaged_modality: dict[str, str]) -> str:
    return "\n".join(["# Robustness (validation split)", "", md_table(table), "",
                      *robustness_verdict(table, damaged_modality), ""])


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
    out += ["## Robustness (validation clips, decoded again and damaged)", "",
            (f"Each condition damages {rob['n_damaged'].max()} of {rob['n'].iloc[0]} validation clips "
             f"(rate {r.rate:g}, chosen with the seed): occluded face = box {list(r.occlusion_box)} of the frame "
             f"blacked out; noisy audio = white noise at {r.noise_snr_db:g} dB SNR; missing audio / text = the "
             "modality removed (masked). Pearson and MSE are over all validation clips; weights are the mean "
             "fusion weight over the damaged clips (the same clips for `clean`). Average fusion: "
             f"{ctx['average_source']}."), "",
            md_table(rob.drop(columns=["n"])), "", *robustness_verdict(rob, ctx["damaged_modality"]), "",
            f"Check: clean re-decoded predictions vs the stored features, max |Δ| = {ctx['clean_diff']:.2e}.", "",
            "![fusion weights per condition](figures/weights.png)", ""]

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
