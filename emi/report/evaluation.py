"""``reports/report.md``: the evaluation report, section by section (tables by ``emi.report.tables``, the ablation and
robustness sections by their own modules)."""

from __future__ import annotations

import pandas as pd

from emi.config import SIGNIFICANT_SD
from emi.report.robustness import robustness_tables, robustness_verdict
from emi.report.tables import md_table, pm


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
    full, probe, blocks = (cells.get(c) for c in ctx["cells"])
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
    if blocks and blocks.get("pearson_mean") is not None:
        line += (f"; with the other temporal setting (`{ctx['cells'][2]}`) {blocks['pearson_mean']:.4f}: the "
                 f"model's blocks add {full['pearson_mean'] - blocks['pearson_mean']:+.4f}" +
                 (f" (past {SIGNIFICANT_SD:g} sd)" if blocks.get("exceeds_2sd") else ""))
    return [line]


def _headline(ctx: dict) -> list[str]:
    m, params = ctx["metrics"], ctx["params"]
    frac = m.get("fraction_of_ceiling", {})
    head = [f"**{s}** mean Pearson **{m[s]['pearson_mean']:.4f}** (MSE {m[s]['mse']:.4f}, n={m[s]['n']})"
            for s in ctx["splits"]]
    head += [f"**{frac[s]:.0%}** of the oracle ceiling on {s} ({m['ceiling'][s]['pearson_mean']:.4f})"
             for s in frac]
    out = ["## Headline", "", *[f"- {h}" for h in head]]
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
    return out + ["", "## Per dimension", "", md_table(ctx["per_dim"]), "",
                  "![per-dimension Pearson](figures/per_dimension.png)", "",
                  "Predicted vs true (each point one clip):", "", "![scatter](figures/scatter.png)", ""]


def _ablation(ctx: dict) -> list[str]:
    out = ["## Ablation (validation split)", ""]
    if ctx["ablation_md"]:
        return out + [ln for ln in ctx["ablation_md"].splitlines() if not ln.startswith("# ")] + [""]
    return out + ["No ablation table found (run the ablation stage: `reports/ablation.md`).", ""]


def _robustness(ctx: dict) -> list[str]:
    rob, r = ctx["robustness"], ctx["params"].evaluate.robustness
    n_all = rob[rob.condition != "mixed"]["n_damaged"].max()
    return ["## Robustness (validation clips, decoded again and damaged)", "",
            (f"Each all-clips condition damages {n_all} of {rob['n'].iloc[0]} validation clips (rate {r.rate:g}, "
             f"chosen with the seed); `mixed` damages {r.mixed_rate:.0%} of them, each with one damage drawn at "
             f"random (seeded): occluded face = box {list(r.occlusion_box)} of the frame blacked out; noisy audio = "
             f"white noise at {r.noise_snr_db:g} dB SNR; missing audio / text = the modality removed (masked). "
             "Pearson and MSE are over all validation clips. Models other than the Stage-II one (made by the "
             f"ablation stage): {'; '.join(ctx['model_sources']) or 'none'}."), "",
            *robustness_tables(rob, ctx["mixed"], r.mixed_rate), "",
            *robustness_verdict(rob, ctx["damaged_modality"]), "",
            f"Check: clean re-decoded predictions vs the stored features, max |Δ| = {ctx['clean_diff']:.2e}.", "",
            "![fusion weights per condition](figures/weights.png)", "",
            "## Probes: where information is lost", "",
            *probe_markdown(ctx["probe"], ctx["probe_source"], ctx["params"].evaluate.probe_alphas)]


def _stage1_and_encoders(ctx: dict) -> list[str]:
    s1 = ctx["stage1"]
    out = ["## Stage I alignment (validation retrieval)", ""]
    if s1:
        rows = [{"direction": d, **{k: s1.get(f"{d}_{k}", float("nan")) for k in
                                     ("recall@1", "chance@1", "recall@5", "chance@5")}, "pairs": s1.get(f"{d}_pairs")}
                for d in ("v2t", "a2t")]
        out += [md_table(pd.DataFrame(rows)), "", f"Temperature {s1.get('temperature', float('nan')):.4g}.", ""]
    else:
        out += ["No Stage I metrics found.", ""]
    manifest = ctx["manifest"] or {}
    random = manifest.get("random_init")
    out += ["## Encoders", ""]
    if random:
        out.append(f"**Random-init (untrained) encoders: {', '.join(random)}** — their modality carries no "
                   "pretrained knowledge; scores are not comparable with the paper.")
    elif manifest:
        out.append("Random-init: none: all encoders pretrained.")
    else:
        out.append("No features manifest found: encoders unknown.")
    return out + [f"- `{e['role']}`: {e['kind']} {e['name']} ({e['source']}"
                  f"{', RANDOM INIT' if e.get('random_init') else ''})" for e in manifest.get("encoders", [])] + [""]


def _dataset_and_submission(ctx: dict) -> list[str]:
    out = ["## Dataset", ""]
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
    return out + ["", "## Provenance", "",
                  f"- data fingerprint `{ctx['data_fp']}` over " + ", ".join(f"{k} `{v[:12]}`" for k, v in
                                                                             ctx["data_files"].items()),
                  "- the values every stage read: `params.yaml` at this commit (`dvc params diff` compares runs)", ""]


def report_markdown(ctx: dict) -> str:
    """``reports/report.md``: headline, per-dimension scores, ablation, robustness, probes, Stage I, encoders,
    dataset, submission and provenance. Built from the pipeline's outputs only (never from the MLflow store)."""
    out = ["# EMI evaluation report", "", f"Seed {ctx['params'].seed} · data fingerprint `{ctx['data_fp']}`", "",
           *_headline(ctx), *_ablation(ctx), *_robustness(ctx), *_stage1_and_encoders(ctx),
           *_dataset_and_submission(ctx)]
    return "\n".join(out)
