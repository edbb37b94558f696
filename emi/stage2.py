"""``emi stage2``: tri-modal regression over the frozen Stage-I features (paper sections 3.4-3.6).

MSE (+ optional lambda * (1 - Pearson)), SGDR, EMA of the weights (decay 0.999 in both profiles); the EMA
weights are the ones validated and saved. Checkpoints are atomic; a rerun resumes after the last finished epoch.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi.config import EMOTIONS, Params, Stage2Params
from emi.encoders import resolve_device
from emi.model import EMIFusionModel, emi_loss
from emi.stage1 import load_aligned
from emi.train import (SequenceData, ema_of, load_checkpoint, pearson_per_dim, read_labels, restore_rng, rng_state,
                       save_checkpoint, seed_everything, sgdr)
from emi.utils import fingerprint, sha256_file, tracked, write_json, write_text

log = logging.getLogger(__name__)
ABLATION_MODALITIES = ("V", "A", "T", "VA", "VT", "AT", "VAT")


class Stage2Error(RuntimeError):
    pass


@dataclass
class Stage2Result:
    model_path: Path
    metrics: dict
    predictions: pd.DataFrame
    epochs_run: int
    seconds: float

    def tracking(self) -> dict:
        folder = self.model_path.parent
        history = pd.read_csv(folder / "history.csv").to_dict(orient="records")
        return {"metrics": {**self.metrics, "seconds": self.seconds}, "history": history,
                "artifacts": [folder / "metrics.json", folder / "history.csv", folder / "predictions.csv"]}


def labelled(data: SequenceData, labels: pd.DataFrame) -> SequenceData:
    rows = [i for i, clip in enumerate(data.ids) if clip in labels.index]
    sub = data.subset(rows)
    sub.labels = labels.loc[sub.ids, list(EMOTIONS)].to_numpy(np.float32)
    return sub


def split_data(aligned: Path, raw_dir: Path, inputs: str) -> dict[str, SequenceData]:
    data, splits = load_aligned(aligned, inputs)
    labels = read_labels(raw_dir)
    out = {}
    for split in ("train", "valid", "test"):
        part = data.subset([i for i, s in enumerate(splits) if s == split])
        out[split] = labelled(part, labels) if split != "test" or part.ids and all(
            i in labels.index for i in part.ids) else part
    return out


def dims_of(data: SequenceData) -> dict[str, int]:
    return {"V": data.visual[0].shape[1], "A": data.audio[0].shape[1], "T": data.text.shape[1]}


@torch.no_grad()
def predict(model: EMIFusionModel, data: SequenceData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip predictions (N, 6) and mean fusion weights per modality (N, 3: V, A, T)."""
    model.eval()
    device = next(model.parameters()).device
    preds, weights = [], []
    for start in range(0, len(data), batch_size):
        b = data.batch(list(range(start, min(start + batch_size, len(data)))), device)
        out = model(b["v"], b["a"], b["t"], b["time_mask"], b["modality_mask"])
        preds.append(out["pred"].float().cpu().numpy())
        weights.append(out["clip_weights"].float().cpu().numpy())
    if not preds:
        return np.zeros((0, len(EMOTIONS))), np.zeros((0, 3))
    return np.concatenate(preds), np.concatenate(weights)


def evaluate(model: EMIFusionModel, data: SequenceData, batch_size: int) -> dict[str, float]:
    pred, _ = predict(model, data, batch_size)
    r = pearson_per_dim(pred, data.labels)
    return {"pearson_mean": float(r.mean()), "mse": float(((pred - data.labels) ** 2).mean()),
            **{f"pearson_{e}": float(v) for e, v in zip(EMOTIONS, r)}}


def train_model(p: Stage2Params, seed: int, train: SequenceData, valid: SequenceData, ckpt_path: Path | None,
                log_epochs: bool = True, data_key: str = "") -> tuple[EMIFusionModel, list[dict], int]:
    """Returns the EMA model (the one to evaluate and ship), the per-epoch history and epochs run now."""
    generator = seed_everything(seed)
    device = resolve_device(p.device)
    model = EMIFusionModel.from_params(p, dims_of(train)).to(device)
    ema = ema_of(model, p.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.schedule.lr_max, weight_decay=p.weight_decay)
    scheduler = sgdr(optimizer, p.schedule)
    run_key = fingerprint({"stage2": p.model_dump(mode="json"), "seed": seed, "train": train.ids,
                           "dims": dims_of(train), "data": data_key})
    history: list[dict] = []
    start_epoch = 0
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None and state.get("run_key") == run_key:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])  # (a checkpoint written on GPU loads on CPU and back)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        restore_rng(state["rng"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        log.info("stage II: resuming after epoch %d of %d", start_epoch, p.schedule.epochs)

    for epoch in range(start_epoch, p.schedule.epochs):
        model.train()
        losses = []
        for b in train.batches(p.batch_size, generator, device):
            out = model(b["v"], b["a"], b["t"], b["time_mask"], b["modality_mask"])
            loss = emi_loss(out["pred"], b["y"], p.pearson_loss_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema.update_parameters(model)
            losses.append(loss.item())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses))}
        if len(valid) > 1:
            row.update({f"valid_{k}": v for k, v in evaluate(ema.module, valid, p.batch_size).items()})
        history.append(row)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, {"run_key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                                        "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                        "rng": rng_state(), "history": history})
        if log_epochs:
            log.info("stage II epoch %d/%d: train_loss=%.4f valid_pearson=%.4f", epoch + 1, p.schedule.epochs,
                     row["train_loss"], row.get("valid_pearson_mean", float("nan")))
    return ema.module.eval(), history, p.schedule.epochs - start_epoch


def save_model(path: Path, model: EMIFusionModel, p: Stage2Params, dims: dict[str, int]) -> None:
    state = {k: v.cpu() for k, v in model.state_dict().items()}  # loadable anywhere
    save_checkpoint(path, {"model": state, "dims": dims, "params": p.model_dump(mode="json")})


def load_model(path: Path) -> EMIFusionModel:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EMIFusionModel.from_params(Stage2Params.model_validate(state["params"]), state["dims"])
    model.load_state_dict(state["model"])
    return model.eval()


def prediction_table(model: EMIFusionModel, parts: dict[str, SequenceData], batch_size: int) -> pd.DataFrame:
    rows = []
    for split, data in parts.items():
        pred, weights = predict(model, data, batch_size)
        for i, clip in enumerate(data.ids):
            row = {"id": clip, "split": split, **dict(zip(EMOTIONS, pred[i].round(6)))}
            row.update({f"weight_{m}": round(float(w), 6) for m, w in zip("VAT", weights[i])})
            if data.labels is not None:
                row.update({f"true_{e}": float(v) for e, v in zip(EMOTIONS, data.labels[i])})
            rows.append(row)
    return pd.DataFrame(rows)


@tracked("stage2")
def stage2(params: Params, aligned: Path, raw_dir: Path, model_dir: Path, show_progress: bool = True) -> Stage2Result:
    p = params.stage2
    started = time.perf_counter()
    parts = split_data(aligned, raw_dir, p.inputs)
    if len(parts["train"]) < 2:
        raise Stage2Error(f"stage II needs labelled training clips; found {len(parts['train'])} in {raw_dir}")
    model_dir.mkdir(parents=True, exist_ok=True)
    # the inputs' content, not just their ids: a checkpoint of other features or labels is never resumed
    data_key = fingerprint([sha256_file(aligned)] + [sha256_file(f) for f in sorted(Path(raw_dir).glob("*_split.csv"))])
    model, history, ran = train_model(p, params.seed, parts["train"], parts["valid"], model_dir / "checkpoint.pt",
                                      show_progress, data_key)
    metrics = {f"valid_{k}": v for k, v in evaluate(model, parts["valid"], p.batch_size).items()} if len(
        parts["valid"]) > 1 else {}
    metrics.update({"train_loss": history[-1]["train_loss"], "epochs": p.schedule.epochs,
                    "modalities": "".join(p.modalities), "fusion": p.fusion})
    model_path = model_dir / "model.pt"
    save_model(model_path, model, p, dims_of(parts["train"]))
    predictions = prediction_table(model, parts, p.batch_size)
    write_text(model_dir / "predictions.csv", predictions.to_csv(index=False))
    write_text(model_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    write_json(model_dir / "metrics.json", metrics)
    seconds = time.perf_counter() - started
    log.info("stage II done in %.1f s: valid mean Pearson %.4f", seconds, metrics.get("valid_pearson_mean", np.nan))
    return Stage2Result(model_path, metrics, predictions, ran, seconds)


def variant_name(modalities: str, fusion: str, inputs: str) -> str:
    return f"{modalities}-{fusion}-{inputs}"


def _ablation_job(job: tuple) -> dict:
    """One grid cell, in a worker process: train (or reuse the Stage-II model), score on valid, maybe save."""
    p, seed, aligned, raw_dir, threads, reuse, save_to = job
    torch.set_num_threads(threads)  # small models: two 1-thread trainings beat one 2-thread training by ~1.6x
    parts = split_data(aligned, raw_dir, p.inputs)
    start = time.perf_counter()
    if reuse is not None:
        model = load_model(reuse)
    else:
        model, _, _ = train_model(p, seed, parts["train"], parts["valid"], None, log_epochs=False)
    if save_to is not None:
        save_model(save_to, model, p, dims_of(parts["train"]))
    scores = evaluate(model, parts["valid"], p.batch_size)
    return {**scores, "seconds": round(time.perf_counter() - start, 1), "reused": reuse is not None}


@tracked("ablate")
def ablation(params: Params, aligned: Path, raw_dir: Path, out_dir: Path,
             modality_sets: tuple[str, ...] = ABLATION_MODALITIES,
             fusions: tuple[str, ...] = ("quality", "average", "concat"),
             inputs: tuple[str, ...] = ("aligned", "encoder", "both"),
             stage2_model: Path | None = None, models_dir: Path | None = None) -> pd.DataFrame:
    """The paper's Table 3 grid: every modality subset with the configured fusion and inputs, then V+A+T with
    each other fusion and each other Stage-II input (Stage-I aligned vs plain encoder features).

    The cell that equals the Stage-II configuration reuses ``stage2_model`` (same params and seed: the same
    model); ``models_dir`` keeps the V+A+T models for evaluate's fusion comparison. Cells train in
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
        jobs.append((p, params.seed, aligned, raw_dir, threads, stage2_model if same else None, save_to))
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
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "ablation.csv", table.to_csv(index=False, float_format="%.4f"))
    write_text(out_dir / "ablation.md", ablation_markdown(table))
    from emi import tracking

    tracking.log_artifacts([out_dir / "ablation.md", out_dir / "ablation.csv"])
    tracking.log_metrics({f"{r['modalities']}/{r['fusion']}/{r['inputs']}/pearson_mean".replace("+", ""):
                          r["pearson_mean"] for r in rows})
    write_json(out_dir / "ablation.json", {f"{r['modalities']}/{r['fusion']}/{r['inputs']}": {
        k: v for k, v in r.items() if k not in ("modalities", "fusion", "inputs", "reused")}
        for r in table.to_dict(orient="records")})  # DVC metrics want a mapping, not a list
    return table


def ablation_markdown(table: pd.DataFrame) -> str:
    cols = ["modalities", "fusion", "inputs", "pearson_mean", *[f"pearson_{e}" for e in EMOTIONS], "mse", "seconds"]
    head = "| " + " | ".join(c.replace("pearson_", "r ") for c in cols) + " |"
    lines = ["# Ablation (validation split)", "", head, "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [f"{r[c]:.1f}" if c == "seconds" else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                 for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

