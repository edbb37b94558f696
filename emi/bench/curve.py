"""`emi bench curve`: a learning curve of the network against the ridge. The embedded generator at several sizes
(persons in proportion to clips, splits by person), the pipeline's own stage functions up to Stage II on each, then
the ablation narrowed to the configured modalities and inputs: the full model (the configured fusion), each other
fusion, the same without the temporal blocks and the linear probe, ``evaluate.seeds`` seeds each.
Per size: valid mean Pearson ± sd per row and the paired differences ± sd over seeds."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emi.bench.scale import sized_params
from emi.config import Params
from emi.evaluation.probes import LINEAR_PROBE
from emi.paths import Layout
from emi.tracking.runs import PARENT_ENV, git_commit

ROW_ORDER = ("full", "no_temporal", "fusion_quality", "fusion_average", "fusion_concat", "fusion_gated",
             "linear_probe")


def machine() -> str:
    """The CPU model, its widest vector extension and its cores (the figures of a CPU run depend on all three)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({isa}), {os.cpu_count()} cores"


def commit() -> str:
    """The package checkout's short HEAD hash, with ``+changes`` when its tracked files differ from it."""
    repo = Path(__file__).resolve().parents[2]
    head = git_commit(repo)
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                             text=True, check=False, cwd=repo).stdout.strip()
    return head[:7] + ("+changes" if changed and head != "nogit" else "")


def rows_of(ablation: dict, modalities: str, fusion: str, inputs: str) -> tuple[dict, dict]:
    """The curve's rows (mean, sd) and paired differences (mean, sd, past 2 sd) from ``reports/ablation.json``,
    whose keys are ``modalities/fusion/inputs`` with ``/clip-mean`` for the cell without temporal blocks."""
    cells = {}
    for key, c in ablation.items():
        mods, f, inp, *clip_mean = key.split("/")
        if mods != modalities or inp != inputs:
            continue
        if f == LINEAR_PROBE:
            cells["linear_probe"] = c
        elif clip_mean:
            cells["no_temporal" if f == fusion else f"no_temporal_{f}"] = c
        else:
            cells[f"fusion_{f}"] = c
    cells["full"] = cells.get(f"fusion_{fusion}")
    rows = {k: {"mean": c["pearson_mean"], "sd": c["pearson_mean_sd"]} for k in ROW_ORDER if (c := cells.get(k))}

    def minus(c: dict) -> dict:  # the full model minus a cell, paired by seed (ablation.json: cell minus full)
        return {"mean": None if c["diff_vs_full"] is None else -c["diff_vs_full"], "sd": c["diff_vs_full_sd"],
                "past_2sd": bool(c["exceeds_2sd"])}

    diffs = {name: minus(cells[k]) for name, k in (("full_minus_probe", "linear_probe"),
                                                   ("full_minus_no_temporal", "no_temporal")) if cells.get(k)}
    diffs |= {f"fusion_minus_{k[len('fusion_'):]}": minus(c) for k, c in cells.items()
              if k.startswith("fusion_") and k != f"fusion_{fusion}" and c}
    return rows, diffs


def split_sizes(raw: Path) -> dict[str, int]:
    return {s: len((raw / f"{s}_split.csv").read_text().splitlines()) - 1
            for s in ("train", "valid", "test") if (raw / f"{s}_split.csv").is_file()}


@contextmanager
def tracking_into(store: str) -> Iterator[None]:
    """MLflow logs into ``store`` inside the block (MLFLOW_TRACKING_URI wins over params.yaml), in runs of its own."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", PARENT_ENV)}
    os.environ["MLFLOW_TRACKING_URI"] = store
    os.environ.pop(PARENT_ENV, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def curve_size(params: Params, n: int, work: Path, echo=print) -> dict:
    """One size: the pipeline's stage functions up to augment in ``work/n<size>`` (in the pipeline's layout), then
    the ablation narrowed to the configured modalities and inputs; the size's entry of the curve's JSON."""
    from emi.model import FUSIONS
    from emi.stages.ablate import ablation
    from emi.stages.augment import augment
    from emi.stages.download import download
    from emi.stages.extract import extract
    from emi.stages.stage1 import stage1
    from emi.stages.transcribe import transcribe

    at = Layout(Path(work) / f"n{n}")
    sized = sized_params(params, n, f"sqlite:///{(at.root / 'mlflow.db').resolve()}", scale_people=True)
    base, seconds = sized.stage2, {}

    def timed(stage: str, run, *args, **kwargs):
        start = time.perf_counter()
        result = run(sized, *args, **kwargs)
        seconds[stage] = round(time.perf_counter() - start, 1)
        echo(f"{n:>6} clips  {stage:<10} {seconds[stage]:8.1f} s")
        return result

    at.root.mkdir(parents=True, exist_ok=True)
    with tracking_into(sized.tracking.uri):
        timed("download", download, at.raw, at.validation, show_progress=False)
        tr = timed("transcribe", transcribe, at.raw, at.transcripts, at.validation, show_progress=False)
        timed("extract", extract, at.raw, tr.table, at.features, at.validation, show_progress=False)
        timed("stage1", stage1, at.features, at.stage1, at.aligned, at.raw, show_progress=False)
        timed("augment", augment, at.raw, at.features, at.alignment_model, at.augmented, show_progress=False)
        timed("trainings", ablation, at.aligned_file, at.raw, at.reports, modality_sets=("".join(base.modalities),),
              fusions=FUSIONS, inputs=(base.inputs,), models_dir=at.ablation_models, augmented=at.augmented_file)
    ablation_json = json.loads((at.reports / "ablation.json").read_text())
    rows, diffs = rows_of(ablation_json, "+".join(base.modalities), base.fusion, base.inputs)
    splits = split_sizes(at.raw)
    return {"clips": n, "train_clips": splits.get("train", 0), "valid_clips": splits.get("valid", 0),
            "persons": sized.download.synthetic.people.count, "rows": rows, "differences": diffs, "seconds": seconds}


def recipe_of(params: Params) -> dict:
    """What a curve's figures depend on besides the data size: the profile, the seeds and the Stage-II recipe."""
    s = params.stage2
    return {"profile": params.profile, "seeds": params.evaluate.seeds,
            "recipe": {"fusion": s.fusion, "temporal": s.temporal, "inputs": s.inputs, "batch_pool": s.batch_pool,
                       "schedule": s.schedule.model_dump(mode="json")}}


def kept_sizes(previous: dict | None, identity: dict, sizes: list[int]) -> list[dict]:
    """The sizes of an earlier curve that this run keeps: those it does not measure again, when the earlier curve
    was made with the same profile, seeds and recipe (each keeps the commit and machine it was measured on)."""
    if not previous:
        return []
    differs = [k for k in identity if previous.get(k) != identity[k]]
    if differs:
        raise ValueError(f"the curve already there was made with another {', '.join(differs)} "
                         f"({', '.join(f'{k}={previous.get(k)!r}' for k in differs)}); write to another --out, "
                         "or pass --fresh to replace it")
    return [{"commit": previous.get("commit"), "machine": previous.get("machine")} | s
            for s in previous.get("sizes", []) if s["clips"] not in sizes]


def bench_curve(params: Params, sizes: list[int], work: Path, echo=print, on_size=None,
                previous: dict | None = None) -> dict:
    """Every size in turn (smallest first); the curve's JSON: commit, machine, the recipe and one entry per size,
    each with the commit and machine it was measured on. ``previous`` (an earlier curve of the same recipe) gives
    the sizes not measured again. ``on_size(curve)`` sees the curve after each size (a run of hours keeps what it
    finished)."""
    start = time.perf_counter()
    identity = recipe_of(params)
    here = {"commit": commit(), "machine": machine()}
    out = here | identity | {"sizes": kept_sizes(previous, identity, list(sizes))}
    for n in sorted(set(sizes)):
        out["sizes"] = sorted(out["sizes"] + [here | curve_size(params, n, work, echo)], key=lambda s: s["clips"])
        out["seconds"] = round(time.perf_counter() - start, 1)
        if on_size is not None:
            on_size(out)
    return out


def _cell(v: dict | None, signed: bool = False) -> str:
    if not v or v.get("mean") is None:
        return "-"
    sd = f" ± {v['sd']:.4f}" if v.get("sd") is not None else ""
    return (f"{v['mean']:+.4f}" if signed else f"{v['mean']:.4f}") + sd + (" *" if v.get("past_2sd") else "")


def curve_markdown(curve: dict) -> list[str]:
    """Rows and differences per size, training clips across; ``*`` marks a difference past 2 sd of the seeds."""
    sizes = curve["sizes"]
    head = ["row"] + [f"{s['clips']} clips ({s['train_clips']} train)" for s in sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROW_ORDER:
        if any(row in s["rows"] for s in sizes):
            lines.append("| " + " | ".join([row] + [_cell(s["rows"].get(row)) for s in sizes]) + " |")
    names = list(dict.fromkeys(k for s in sizes for k in s["differences"]))
    for name in names:
        lines.append("| " + " | ".join([name] + [_cell(s["differences"].get(name), True) for s in sizes]) + " |")
    lines.append("| wall time (s) | " + " | ".join(f"{sum(s['seconds'].values()):,.0f}" for s in sizes) + " |")
    lines.append("| commit | " + " | ".join(s.get("commit") or curve.get("commit", "-") for s in sizes) + " |")
    return lines


def curve_plot(curve: dict, path: Path) -> Path:
    """Valid mean Pearson against training clips (log x), one line per row with its seed sd as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fusion = curve["recipe"]["fusion"]
    for row in ROW_ORDER:
        points = [(s["train_clips"], s["rows"][row]) for s in curve["sizes"] if row in s["rows"]]
        if points and row != f"fusion_{fusion}":  # that one is the full model
            ax.errorbar([x for x, _ in points], [r["mean"] for _, r in points],
                        yerr=[r["sd"] or 0.0 for _, r in points], marker="o", capsize=3,
                        label=f"full ({fusion} fusion)" if row == "full" else row,
                        linestyle="--" if row == "linear_probe" else "-", linewidth=2.5 if row == "full" else 1.2)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())  # label the sizes measured, not the decade's steps
    ax.set_xticks([s["train_clips"] for s in curve["sizes"]])
    ax.set_xlabel("training clips")
    ax.set_ylabel("valid mean Pearson")
    commits = ", ".join(dict.fromkeys(s.get("commit") or curve["commit"] for s in curve["sizes"]))
    ax.set_title(f"learning curve ({curve['seeds']} seeds, {commits})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path
