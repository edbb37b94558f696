"""`emi bench project`: how long the pipeline takes on Hume-Vidmimic2, from runs anyone can make. Every stage of
dvc.yaml runs as its own process (``emi.bench.scale``) on generated datasets of two or more sizes; each stage's time
is fitted as ``fixed + per_unit * units``, where the unit is what the stage grows with (clips for download,
transcribe and extract; training clip-epochs for Stage I and for each Stage-II training, times the ablation's
trainings; validation clips for evaluate), and the fit is read at the units Hume-Vidmimic2's split sizes give under
the same profile. Beside the time: the GPU's busy share and peak memory per stage (sampled with ``nvidia-smi`` when
there is one) and the disk the run's folders take."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from emi.bench.scale import StageRun, bench_scale
from emi.config import Params
from emi.evaluation.ablation import ablation_grid

HUME_SPLITS = {"train": 8072, "valid": 4588, "test": 4586}
"""Hume-Vidmimic2's split sizes (17,246 clips)."""

UNITS = {"download": "clips", "transcribe": "clips", "extract": "clips", "stage1": "training clip-epochs",
         "augment": "training clips", "stage2": "training clip-epochs",
         "ablate": "training clip-epochs x trainings", "evaluate": "validation clips"}
"""What each stage's time grows with."""


def training_units(p: Params, train_clips: int) -> float:
    """Clip-epochs of one Stage-II training: training clips x epochs, or for a length in optimizer steps the clips
    those steps draw (steps x batch size, whatever the data size)."""
    s = p.stage2.schedule
    return float(s.steps * p.stage2.batch_size if s.steps is not None else train_clips * s.epochs)


def trainings(p: Params) -> int:
    """Stage-II trainings of the ablation: every cell of the grid, ``evaluate.seeds`` times."""
    return len(ablation_grid(p.stage2)) * p.evaluate.seeds


def units(stage: str, p: Params, splits: dict[str, int]) -> float:
    clips = sum(splits.values())
    train, valid = splits.get("train", 0), splits.get("valid", 0)
    return {"download": clips, "transcribe": clips, "extract": clips,
            "stage1": train * p.stage1.schedule.epochs, "augment": train,
            "stage2": training_units(p, train), "ablate": training_units(p, train) * trainings(p),
            "evaluate": valid}.get(stage, clips)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``fixed, per_unit`` of a least-squares line (per_unit 0 where the units do not change between sizes; per
    unit never below 0: a stage does not get faster with more work, whatever the noise of two points)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs)) < 2:
        return float(y.mean()), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    if slope < 0:
        return float(y.mean()), 0.0
    return float(intercept), float(slope)


def projection(runs: list[StageRun], p: Params, splits: dict[int, dict[str, int]],
               target: dict[str, int] = HUME_SPLITS) -> dict:
    """Per stage: its unit, the fit, the units and projected seconds at ``target``, the GPU's busy share and peak
    memory (the largest size's), the disk the run's folders took after it; and ``projected_total_s``."""
    sizes = sorted({r.clips for r in runs})
    by = {(r.stage, r.clips): r for r in runs}
    stages = list(dict.fromkeys(r.stage for r in runs))
    out = {}
    for stage in stages:
        xs = [units(stage, p, splits[n]) for n in sizes]
        fixed, per_unit = fit(xs, [by[(stage, n)].seconds for n in sizes])
        at = units(stage, p, target)
        last = by[(stage, sizes[-1])]
        out[stage] = {"unit": UNITS.get(stage, "clips"), "units": dict(zip(map(str, sizes), xs)),
                      "seconds": {str(n): round(by[(stage, n)].seconds, 2) for n in sizes},
                      "fixed_s": round(fixed, 2), "per_unit_s": per_unit, "target_units": at,
                      "projected_s": round(fixed + per_unit * at, 1), "gpu_busy": last.gpu_busy,
                      "peak_gpu_mb": last.peak_gpu_mb, "disk_mb": last.disk_mb, "peak_rss_mb": round(last.peak_rss_mb)}
    clips = [sum(splits[n].values()) for n in sizes]
    disk = [by[(stages[-1], n)].disk_mb for n in sizes] if stages else []
    d_fixed, d_per = fit(clips, disk) if disk and None not in disk else (math.nan, math.nan)
    return {"stages": out, "projected_total_s": round(sum(s["projected_s"] for s in out.values()), 1),
            "target_splits": dict(target), "projected_disk_gb": (None if math.isnan(d_per) else
                                                                 round((d_fixed + d_per * sum(target.values())) / 1024,
                                                                       1))}


def projection_markdown(proj: dict) -> list[str]:
    lines = ["| stage | unit | seconds per size | fixed s | s per unit | projected | GPU busy | peak GPU MB |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, s in proj["stages"].items():
        busy = "-" if s["gpu_busy"] is None else f"{100 * s['gpu_busy']:.0f} %"
        gpu_mb = "-" if s["peak_gpu_mb"] is None else f"{s['peak_gpu_mb']:,.0f}"
        lines.append(f"| {stage} | {s['unit']} | {' / '.join(f'{v:.1f}' for v in s['seconds'].values())} | "
                     f"{s['fixed_s']:.1f} | {s['per_unit_s']:.3g} | {s['projected_s'] / 60:,.1f} min | {busy} | "
                     f"{gpu_mb} |")
    total = proj["projected_total_s"]
    lines.append(f"| **total** | | | | | **{total / 60:,.1f} min ({total / 3600:.2f} h)** | | |")
    return lines


def bench_project(params: Params, sizes: list[int], work: Path, dvc_yaml: Path,
                  stages: tuple[str, ...] | None = None, echo=print) -> dict:
    """Run the stages at each size (``bench_scale``) and project them to Hume-Vidmimic2."""
    from emi.bench.curve import commit, machine, split_sizes
    from emi.bench.scale import device_name

    if len(set(sizes)) < 2:
        raise ValueError("a projection needs two sizes or more (--clips 24,48)")
    runs = bench_scale(params, sizes, work, dvc_yaml, stages, echo)
    splits = {n: split_sizes(Path(work) / f"n{n}" / "data" / "raw") for n in sorted(set(sizes))}
    return {"commit": commit(), "machine": machine(), "device": device_name(), "profile": params.profile,
            "sizes": {str(n): s for n, s in splits.items()}, **projection(runs, params, splits),
            "runs": [r.__dict__ for r in runs]}
