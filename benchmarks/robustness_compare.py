"""Two sets of Stage-II models on the same damaged validation clips: evaluate's robustness conditions, scored per
training seed, with the paired difference per condition.

For a question the ablation cannot answer at a size where `emi evaluate` is not run, for example whether `paper+`'s
corruption-aware training still wins on damaged clips at 1,800 training clips (docs/model.md):

    python benchmarks/robustness_compare.py --root data/bench-curve/n3000 --clips 3000 \\
        --models with=data/bench-curve/n3000/models/ablation --models without=<an ablate run's models/ablation> \\
        --fusion concat --out benchmarks/results/robustness-compare.json

``--root`` is a pipeline root (``emi bench curve`` leaves one per size: ``<work>/n<clips>``) with its features,
Stage-I model and raw data; each ``--models NAME=DIR`` holds an ablation's saved models of that fusion
(``VAT-<fusion>-both.pt``, ``-seed1.pt``, ...), all trained on that root's aligned features. The clips are decoded
and encoded once per condition (the library's robustness path, as `emi evaluate` runs it) and every model scores
the same damaged features. The first ``--models`` minus each other, paired by seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emi.bench.curve import commit, machine
from emi.bench.scale import sized_params
from emi.config import Params, load_params
from emi.evaluation.robustness import CONDITIONS, measure
from emi.paths import Layout
from emi.train.fusion import load_fusion, split_data, variant_name
from emi.utils import write_json


def saved_models(folder: Path, modalities: str, fusion: str, inputs: str, seeds: int) -> list[tuple]:
    """One (model, inputs) per training seed from an ablation's saved models (every seed, seed 0 included)."""
    out = []
    for i in range(seeds):
        path = folder / f"{variant_name(modalities, fusion, inputs, i)}.pt"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (an ablation's saved model of fusion {fusion}, seed {i})")
        model, p = load_fusion(path)
        out.append((model, p.inputs))
    return out


def compare(params: Params, root: Path, sets: dict[str, Path], fusion: str) -> dict:
    """Every condition x model set x seed on ``root``'s validation clips; per condition the mean ± sd of each set
    and the first set minus each other, paired by seed (``past_2sd``)."""
    layout = Layout(root)
    s2 = params.stage2
    mods = "".join(s2.modalities)
    models = {name: saved_models(Path(d), mods, fusion, s2.inputs, params.evaluate.seeds) for name, d in sets.items()}
    valid = split_data(layout.aligned_file, layout.raw, s2.inputs)["valid"]
    runs = measure(params, layout, valid, models, s2.batch_size).runs
    names, table = list(models), {}
    for cond in CONDITIONS:
        at = runs[runs.condition == cond]
        per = {n: at[at.fusion == n].sort_values("seed")["pearson_mean"].to_numpy() for n in names}
        row = {n: {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}
               for n, v in per.items()}
        for other in names[1:]:
            d = per[names[0]] - per[other]
            sd = float(d.std(ddof=1)) if len(d) > 1 else None
            row[f"{names[0]}_minus_{other}"] = {"mean": float(d.mean()), "sd": sd,
                                                "past_2sd": sd is not None and bool(abs(d.mean()) > 2 * sd)}
        table[cond] = row
    return {"fusion": fusion, "models": {n: str(d) for n, d in sets.items()}, "valid_clips": len(valid),
            "seeds": params.evaluate.seeds, "conditions": table}


def markdown(result: dict) -> list[str]:
    names = list(result["models"])
    diffs = [f"{names[0]}_minus_{o}" for o in names[1:]]

    def cell(v: dict, signed: bool = False) -> str:
        sd = "" if v["sd"] is None else f" ± {v['sd']:.4f}"
        return (f"{v['mean']:+.4f}" if signed else f"{v['mean']:.4f}") + sd + (" *" if v.get("past_2sd") else "")
    lines = [f"| condition | {' | '.join(names)} | " + " | ".join(f"{names[0]} − {o}" for o in names[1:]) + " |",
             "|---" * (len(names) + len(diffs) + 1) + "|"]
    for cond, row in result["conditions"].items():
        lines.append(f"| {cond} | " + " | ".join([cell(row[n]) for n in names] + [cell(row[k], True) for k in diffs])
                     + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--profile", default="embedded")
    ap.add_argument("--clips", type=int, help="the root's size when the curve made it (its generator's params)")
    ap.add_argument("--models", action="append", required=True, help="NAME=DIR, two or more")
    ap.add_argument("--fusion", default="concat")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    start = time.perf_counter()
    params = load_params(None, profile=args.profile)
    if args.clips:
        params = sized_params(params, args.clips, params.tracking.uri, scale_people=True)
    result = compare(params, args.root, {n: Path(d) for n, d in (m.split("=", 1) for m in args.models)}, args.fusion)
    result = {"commit": commit(), "machine": machine(), "root": str(args.root), "clips": args.clips} | result
    result["seconds"] = round(time.perf_counter() - start, 1)
    print("\n".join(markdown(result)) + f"\n{result['valid_clips']} valid clips, {result['seconds']} s")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
