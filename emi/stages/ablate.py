"""``emi ablate``: the paper's Table 3 grid (modality subsets, fusions, Stage-II inputs), each cell a Stage-II
training scored on the validation split."""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from emi.config import Params
from emi.report.markdown import ablation_markdown
from emi.tracking import runs
from emi.tracking.runs import tracked
from emi.train.fusion import (ABLATION_MODALITIES, dims_of, evaluate, load_model, save_model, split_data,
                              train_model, variant_name, with_copies)
from emi.utils import write_json, write_text

log = logging.getLogger(__name__)


def _ablation_job(job: tuple) -> dict:
    """One grid cell, in a worker process: train (or reuse the Stage-II model), score on valid, maybe save."""
    p, seed, aligned, augmented, raw_dir, threads, reuse, save_to = job
    torch.set_num_threads(threads)  # small models: two 1-thread trainings beat one 2-thread training by ~1.6x
    parts = split_data(aligned, raw_dir, p.inputs)
    start = time.perf_counter()
    if reuse is not None:
        model = load_model(reuse)
    else:
        model, _, _ = train_model(p, seed, with_copies(parts["train"], augmented, p.inputs), parts["valid"], None,
                                  log_epochs=False)
    if save_to is not None:
        save_model(save_to, model, p, dims_of(parts["train"]))
    scores = evaluate(model, parts["valid"], p.batch_size)
    return {**scores, "seconds": round(time.perf_counter() - start, 1), "reused": reuse is not None}


@tracked("ablate")
def ablation(params: Params, aligned: Path, raw_dir: Path, out_dir: Path,
             modality_sets: tuple[str, ...] = ABLATION_MODALITIES,
             fusions: tuple[str, ...] = ("quality", "average", "concat"),
             inputs: tuple[str, ...] = ("aligned", "encoder", "both"),
             stage2_model: Path | None = None, models_dir: Path | None = None,
             augmented: Path | None = None) -> pd.DataFrame:
    """The paper's Table 3 grid: every modality subset with the configured fusion and inputs, then V+A+T with
    each other fusion and each other Stage-II input (Stage-I aligned vs plain encoder features).

    The cell that equals the Stage-II configuration reuses ``stage2_model`` (same params and seed: the same
    model); ``models_dir`` keeps the V+A+T models for evaluate's fusion comparison. Every cell trains on the
    training split plus its damaged copies (``augmented``), as Stage II does. Cells train in
    ``stage2.ablation_workers`` processes."""
    base = params.stage2
    grid = [(m, base.fusion, base.inputs) for m in modality_sets]
    grid += [("VAT", f, base.inputs) for f in fusions if f != base.fusion]
    grid += [("VAT", base.fusion, i) for i in inputs if i != base.inputs]
    workers = max(1, min(base.ablation_workers, len(grid)))
    threads = max(1, torch.get_num_threads() // workers)
    jobs = []
    for mods, fusion, inp in grid:
        p = base.model_copy(update={"modalities": tuple(mods), "fusion": fusion, "inputs": inp})
        same = stage2_model is not None and Path(stage2_model).is_file() and p == base
        keep = models_dir is not None and mods == "VAT"
        save_to = Path(models_dir) / f"{variant_name(mods, fusion, inp)}.pt" if keep and not same else None
        jobs.append((p, params.seed, aligned, augmented, raw_dir, threads, stage2_model if same else None, save_to))
    if models_dir is not None:
        Path(models_dir).mkdir(parents=True, exist_ok=True)
    if workers == 1:
        results = [_ablation_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_ablation_job, jobs))
    rows = []
    for (mods, fusion, inp), scores in zip(grid, results):
        rows.append({"modalities": "+".join(mods), "fusion": fusion, "inputs": inp, **scores})
        log.info("ablation %s/%s/%s: valid mean Pearson %.4f", mods, fusion, inp, scores["pearson_mean"])
    table = pd.DataFrame(rows)
    runs.log_metrics({f"{r['modalities']}/{r['fusion']}/{r['inputs']}/seconds".replace("+", ""): r["seconds"]
                      for r in rows})
    results = table.drop(columns=["seconds"])  # DVC outputs hold results, not timings: same inputs, same bytes
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "ablation.csv", results.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "ablation.md", ablation_markdown(results))
    runs.log_artifacts([out_dir / "ablation.md", out_dir / "ablation.csv"])
    runs.log_metrics({f"{r['modalities']}/{r['fusion']}/{r['inputs']}/pearson_mean".replace("+", ""):
                          r["pearson_mean"] for r in rows})
    # DVC metrics (a mapping, not a list): two numbers per cell; the per-dimension scores are in ablation.csv
    write_json(out_dir / "ablation.json", {f"{r['modalities']}/{r['fusion']}/{r['inputs']}": {
        "pearson_mean": r["pearson_mean"], "mse": r["mse"]} for r in table.to_dict(orient="records")})
    return table
