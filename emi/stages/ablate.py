"""``emi ablate``: the paper's Table 3 grid (modality subsets, fusions, Stage-II inputs), each cell Stage-II
trainings (``evaluate.seeds`` of them, mean ± sd) scored on the validation split, next to a linear probe."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from emi.config import Params, Stage2Params
from emi.evaluation.ablation import (INPUTS, MODALITY_SETS, RIDGE, ablation_grid, ablation_table, blocks_name,
                                     cell_key)
from emi.model import FUSIONS
from emi.evaluation.probes import LINEAR_PROBE as PROBE, linear_probe
from emi.report.ablation import ablation_markdown
from emi.tracking import runs
from emi.tracking.runs import tracked
from emi.paths import work_dir
from emi.train import records
from emi.train.fusion import (dims_of, score_model, load_model, save_model, split_data, train_model,
                              training_data_key, variant_name, with_copies)
from emi.utils import end_with_parent, finite, remove_temporaries, write_json, write_text

log = logging.getLogger(__name__)


def _ablation_job(job: tuple) -> dict:
    """One grid cell, in a worker process: train (or reuse the Stage-II model), score on valid, maybe save; a
    training is recorded in ``work`` as it finishes (``emi.train.records``)."""
    p, seed, aligned, augmented, raw_dir, threads, reuse, save_to, work, key = job
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
    result = {**score_model(model, parts["valid"], p.batch_size), "seconds": round(time.perf_counter() - start, 1),
              "reused": reuse is not None}
    if work is not None and reuse is None:
        records.record(work, key, result, save_to)
    return result


def _train_cells(params: Params, cells: list[tuple[int, Stage2Params]], data: tuple[Path, Path | None, Path],
                 stage2_model: Path | None, models_dir: Path | None, work: Path | None) -> list[dict]:
    """Each (seed index, settings) cell's valid scores, in order: read from ``work`` where that training finished
    before, else trained in ``stage2.ablation_workers`` processes (and recorded there as each finishes)."""
    base, (aligned, augmented, raw_dir) = params.stage2, data
    workers = max(1, min(base.ablation_workers, len(cells)))
    threads = max(1, torch.get_num_threads() // workers)  # of the whole grid: a resumed run's keys are the same
    data_key = training_data_key(aligned, augmented, raw_dir)
    if work is not None and Path(work).is_dir():
        remove_temporaries(Path(work))  # a kill mid-write leaves them
    jobs, results = [], {}
    for i, (k, p) in enumerate(cells):
        same = k == 0 and stage2_model is not None and Path(stage2_model).is_file() and p == base
        # evaluate's robustness models
        keep = models_dir is not None and p.modalities == base.modalities and p.temporal == base.temporal
        save_to = (Path(models_dir) / f"{variant_name(''.join(p.modalities), p.fusion, p.inputs, k)}.pt"
                   if keep and not same else None)
        key = records.training_key(p, params.seed + k, data_key, threads)
        done = records.finished(work, key, save_to is not None) if work is not None and not same else None
        if done is not None:
            results[i] = done
            if save_to is not None:
                records.restore_model(work, key, save_to)
            continue
        jobs.append((i, (p, params.seed + k, aligned, augmented, raw_dir, threads, stage2_model if same else None,
                         save_to, work, key)))
    if results:
        log.info("ablation: %d of %d trainings finished before (%s), not trained again", len(results), len(cells),
                 work)
    runs.log_metrics({"trainings_resumed": len(results), "trainings_run": len(jobs)})
    if models_dir is not None:
        Path(models_dir).mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        results |= {i: _ablation_job(job) for i, job in jobs}
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
            results |= dict(zip([i for i, _ in jobs], pool.map(_ablation_job, [job for _, job in jobs])))
    return [results[i] for i in range(len(cells))]


@tracked("ablate")
def ablation(params: Params, aligned: Path, raw_dir: Path, out_dir: Path,
             modality_sets: tuple[str, ...] = MODALITY_SETS,
             fusions: tuple[str, ...] = FUSIONS,
             inputs: tuple[str, ...] = INPUTS,
             stage2_model: Path | None = None, models_dir: Path | None = None,
             augmented: Path | None = None, work: Path | None = None) -> pd.DataFrame:
    """The paper's Table 3 grid: every modality subset with the configured fusion and inputs, then the configured
    modalities (V+A+T by default) with each other fusion and each other Stage-II input (Stage-I aligned vs plain
    encoder features); each cell trained with ``evaluate.seeds`` seeds (seed + i) and shown as mean ± sd; last, the
    linear-probe baseline row on the same modalities.

    The seed-0 cell that equals the Stage-II configuration reuses ``stage2_model`` (same params and seed: the same
    model); ``models_dir`` keeps the other models of the configured modalities for every seed
    (``variant_name(..., i)``): evaluate's fusion comparison reads them, and trains none itself. Every cell trains on
    the training split plus its damaged copies (``augmented``), as Stage II does. Cells train in
    ``stage2.ablation_workers`` processes; the cells are ``ablation_grid``'s. Each finished training is recorded in
    ``work`` (default: ``models_dir``'s work folder; none without it), so a killed grid resumes from its finished
    trainings and ends with the same table."""
    base = params.stage2
    cells = [(k, p) for k in range(params.evaluate.seeds) for p in ablation_grid(base, modality_sets, fusions, inputs)]
    work = work if work is not None else work_dir(models_dir) if models_dir is not None else None
    results = _train_cells(params, cells, (aligned, augmented, raw_dir), stage2_model, models_dir, work)
    rows = []
    for (k, p), scores in zip(cells, results):
        rows.append({"modalities": "+".join(p.modalities), "fusion": p.fusion, "inputs": p.inputs,
                     "blocks": blocks_name(p.temporal), "seed": k, **scores})
        log.info("ablation %s seed %d: valid mean Pearson %.4f", cell_key(rows[-1]), k, scores["pearson_mean"])
    start = time.perf_counter()
    parts = split_data(aligned, raw_dir, base.inputs)
    probe = linear_probe(parts["train"], parts["valid"], params.evaluate.probe_alphas, "".join(base.modalities))
    seconds = round(time.perf_counter() - start, 1)
    log.info("ablation linear probe: valid mean Pearson %.4f (%.1f s)", probe["pearson_mean"], seconds)
    # deterministic (no training seed): the same numbers next to every seed, so differences pair by seed
    rows += [{"modalities": "+".join(base.modalities), "fusion": PROBE, "inputs": base.inputs, "blocks": RIDGE, "seed": k,
              **probe, "seconds": seconds if k == 0 else 0.0, "reused": False} for k in range(params.evaluate.seeds)]
    runs_table = pd.DataFrame(rows)
    table = ablation_table(runs_table, ("+".join(base.modalities), base.fusion, base.inputs,
                                        blocks_name(base.temporal)))
    runs.log_metrics({f"{cell_key(r)}/seconds".replace("+", ""): r["seconds"]
                      for r in table.to_dict(orient="records")})
    results = table.drop(columns=["seconds"])  # DVC outputs hold results, not timings: same inputs, same bytes
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "ablation.csv", results.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "ablation_seeds.csv", runs_table.drop(columns=["seconds"]).to_csv(
        index=False, float_format="%.4f"))
    write_text(out_dir / "ablation.md", ablation_markdown(results))
    runs.log_artifacts([out_dir / "ablation.md", out_dir / "ablation.csv", out_dir / "ablation_seeds.csv"])
    runs.log_metrics({f"{cell_key(r)}/pearson_mean".replace("+", ""):
                          r["pearson_mean"] for r in table.to_dict(orient="records")})
    # DVC metrics (a mapping, not a list): mean and sd of two numbers per cell; per-dimension scores in ablation.csv
    write_json(out_dir / "ablation.json", {cell_key(r): {
        k: finite(r[k]) for k in ("pearson_mean", "pearson_mean_sd", "mse", "mse_sd", "diff_vs_full",
                                  "diff_vs_full_sd", "exceeds_2sd")} for r in table.to_dict(orient="records")})
    return table
