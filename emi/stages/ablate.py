"""``emi ablate``: the paper's Table 3 grid (modality subsets, fusions, Stage-II inputs), each cell Stage-II
trainings (``evaluate.seeds`` of them, mean ± sd) scored on the validation split, next to a linear probe."""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from emi.config import Params
from emi.evaluation.ablation import (INPUTS, MODALITY_SETS, RIDGE, ablation_grid, ablation_table, blocks_name,
                                     cell_key)
from emi.model import FUSIONS
from emi.evaluation.probes import LINEAR_PROBE as PROBE, linear_probe
from emi.report.ablation import ablation_markdown
from emi.tracking import runs
from emi.tracking.runs import tracked
from emi.train.fusion import (dims_of, score_model, load_model, save_model, split_data, train_model, variant_name,
                              with_copies)
from emi.utils import finite, write_json, write_text

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
    scores = score_model(model, parts["valid"], p.batch_size)
    return {**scores, "seconds": round(time.perf_counter() - start, 1), "reused": reuse is not None}


@tracked("ablate")
def ablation(params: Params, aligned: Path, raw_dir: Path, out_dir: Path,
             modality_sets: tuple[str, ...] = MODALITY_SETS,
             fusions: tuple[str, ...] = FUSIONS,
             inputs: tuple[str, ...] = INPUTS,
             stage2_model: Path | None = None, models_dir: Path | None = None,
             augmented: Path | None = None) -> pd.DataFrame:
    """The paper's Table 3 grid: every modality subset with the configured fusion and inputs, then the configured
    modalities (V+A+T by default) with each other fusion and each other Stage-II input (Stage-I aligned vs plain
    encoder features); each cell trained with ``evaluate.seeds`` seeds (seed + i) and shown as mean ± sd; last, the
    linear-probe baseline row on the same modalities.

    The seed-0 cell that equals the Stage-II configuration reuses ``stage2_model`` (same params and seed: the same
    model); ``models_dir`` keeps the other models of the configured modalities for every seed
    (``variant_name(..., i)``): evaluate's fusion comparison reads them, and trains none itself. Every cell trains on
    the training split plus its damaged copies (``augmented``), as Stage II does. Cells train in
    ``stage2.ablation_workers`` processes; the cells are ``ablation_grid``'s."""
    base = params.stage2
    cells = [(k, p) for k in range(params.evaluate.seeds) for p in ablation_grid(base, modality_sets, fusions, inputs)]
    workers = max(1, min(base.ablation_workers, len(cells)))
    threads = max(1, torch.get_num_threads() // workers)
    jobs = []
    for k, p in cells:
        mods = "".join(p.modalities)
        same = k == 0 and stage2_model is not None and Path(stage2_model).is_file() and p == base
        # evaluate's robustness models
        keep = models_dir is not None and p.modalities == base.modalities and p.temporal == base.temporal
        save_to = Path(models_dir) / f"{variant_name(mods, p.fusion, p.inputs, k)}.pt" if keep and not same else None
        jobs.append((p, params.seed + k, aligned, augmented, raw_dir, threads, stage2_model if same else None,
                     save_to))
    if models_dir is not None:
        Path(models_dir).mkdir(parents=True, exist_ok=True)
    if workers == 1:
        results = [_ablation_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_ablation_job, jobs))
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
