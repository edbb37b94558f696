"""Stage II (paper sections 3.4-3.6): tri-modal regression over the frozen Stage-I features.

MSE (+ optional lambda * (1 - Pearson)), SGDR, EMA of the weights; the EMA weights are the ones validated and
saved. Checkpoints are atomic; a rerun resumes after the last finished epoch. Also what inference needs of a
Stage-II model: loading it and predicting.
"""

from __future__ import annotations

import logging
import math
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi.config import EMOTIONS, Stage2Params
from emi.data.dataset import read_labels
from emi.encoders.base import resolve_device
from emi.metrics import scores
from emi.model import EMIFusionModel, emi_loss
from emi.paths import COPY_SEPARATOR
from emi.train.projection import load_aligned
from emi.data.sequences import SequenceData, batch_cues, to_device
from emi.train.loop import (ema_of, load_checkpoint, modality_dropout, restore_rng, rng_state, save_checkpoint,
                            seed_everything, sgdr)
from emi.utils import fingerprint, sha256_file

log = logging.getLogger(__name__)


SAVED_BEFORE = {"reliability_cues": False, "batch_pool": 1, "validate_every": 1, "cache_mb": 0.0, "temporal": True}
"""Settings a model saved before they existed was trained with (it loads and predicts as it did)."""


AVAILABLE = "available"
"""A training batch's key for the modality mask after modality dropout (what the model may use)."""


class Stage2Error(RuntimeError):
    pass


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


def with_copies(train: SequenceData, augmented: Path | None, inputs: str) -> SequenceData:
    """The training split followed by the damaged copies of its clips (``emi augment``), each labelled like its
    source clip; the split itself when there is no augmented file (``stage2.augment.fraction: 0``). A copy whose
    source is not in the split (its labels were left out) is not trained on."""
    if augmented is None or not Path(augmented).is_file():
        return train
    copies, _ = load_aligned(augmented, inputs)
    row = {clip: i for i, clip in enumerate(train.ids)}
    sources = [clip.split(COPY_SEPARATOR)[0] for clip in copies.ids]
    keep = [j for j, s in enumerate(sources) if s in row]
    copies = copies.subset(keep)
    copies.labels = train.labels[[row[sources[j]] for j in keep]]
    return train.followed_by(copies)


def training_data_key(aligned: Path, augmented: Path | None, raw_dir: Path) -> str:
    """What a Stage-II training's inputs hold, by content (the aligned features, the damaged copies when there are
    any, the split files' labels): a checkpoint or finished training of other features or labels is never reused."""
    inputs = [aligned, *([augmented] if augmented is not None and Path(augmented).is_file() else [])]
    return fingerprint([sha256_file(f) for f in inputs] +
                       [sha256_file(f) for f in sorted(Path(raw_dir).glob("*_split.csv"))])


def dims_of(data: SequenceData) -> dict[str, int]:
    """Feature widths V, A, T, and the reliability cues' widths (``cues_V``, ``cues_A``) when the data has cues."""
    dims = {"V": data.visual[0].shape[1], "A": data.audio[0].shape[1], "T": data.text.shape[1]}
    if data.cues is not None:
        dims |= {"cues_V": data.cues["visual"][0].shape[1], "cues_A": data.cues["audio"][0].shape[1]}
    return dims


def forward_batch(model: EMIFusionModel, b: dict[str, torch.Tensor],
                  available: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model on one batch of ``SequenceData.batch``; ``available`` replaces the batch's modality mask (training's
    modality dropout)."""
    mask = b["modality_mask"] if available is None else available
    return model(b["v"], b["a"], b["t"], b["time_mask"], mask, batch_cues(b))


@torch.no_grad()
def predict(model: EMIFusionModel, data: SequenceData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip predictions (N, 6) and mean fusion weights per modality (N, 3: V, A, T)."""
    model.eval()
    device = next(model.parameters()).device
    preds, weights = [], []
    for b in data.chunks(batch_size, device):
        out = forward_batch(model, b)
        preds.append(out["pred"].float().cpu().numpy())
        weights.append(out["clip_weights"].float().cpu().numpy())
    if not preds:
        return np.zeros((0, len(EMOTIONS))), np.zeros((0, 3))
    return np.concatenate(preds), np.concatenate(weights)


def score_model(model: EMIFusionModel, data: SequenceData, batch_size: int) -> dict[str, float]:
    """The model's scores on labelled clips (``emi.metrics.scores``)."""
    return scores(predict(model, data, batch_size)[0], data.labels)


def train_model(p: Stage2Params, seed: int, train: SequenceData, valid: SequenceData, ckpt_path: Path | None,
                log_epochs: bool = True, data_key: str = "") -> tuple[EMIFusionModel, list[dict], int]:
    """Returns the EMA model (the one to evaluate and ship), the per-epoch history and epochs run now."""
    generator = seed_everything(seed)
    device = resolve_device(p.device)
    model = EMIFusionModel.from_params(p, dims_of(train)).to(device)
    ema = ema_of(model, p.ema_decay)
    # one kernel per step for all parameters: fused on a GPU, foreach (a kernel per operation) on the CPU
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.schedule.lr_max, weight_decay=p.weight_decay, **fused)
    train, valid = train.in_memory(p.cache_mb), valid.in_memory(p.cache_mb)  # every epoch reads every clip
    scheduler = sgdr(optimizer, p.schedule)
    per_epoch = -(-len(train) // p.batch_size)  # batches per epoch (SequenceData.batches: the last one partial)
    epochs = p.schedule.epochs_for(per_epoch)
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
        log.info("stage II: resuming after epoch %d of %d", start_epoch, epochs)

    used = torch.tensor([m in p.modalities for m in ("V", "A", "T")])
    for epoch in range(start_epoch, epochs):
        model.train()
        losses, lr = [], optimizer.param_groups[0]["lr"]  # the epoch's first step's
        # with a length in steps the last epoch stops at the step budget; its batch order is drawn all the same
        batches = islice(train.batches(p.batch_size, generator, "cpu", p.batch_pool),
                         min(per_epoch, p.schedule.steps - epoch * per_epoch) if p.schedule.per_step else None)
        for b in batches:  # built on the host, then copied (no step waits for the device: no .item(), no .cpu())
            if p.augment.modality_dropout > 0:  # drawn from the training generator: the same for a seed
                b[AVAILABLE] = modality_dropout(b["modality_mask"], p.augment.modality_dropout, used, generator)
            b = to_device(b, device)
            out = forward_batch(model, b, b.get(AVAILABLE))
            loss = emi_loss(out["pred"], b["y"], p.pearson_loss_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema.update_parameters(model)
            losses.append(loss.detach())
            if p.schedule.per_step:
                scheduler.step()
        if not p.schedule.per_step:
            scheduler.step()
        # one copy per epoch; the float64 mean of the float32 losses, as when each step's was read
        mean_loss = float(np.mean(torch.stack(losses).cpu().numpy().astype(np.float64))) if losses else math.nan
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": mean_loss}
        if len(valid) > 1 and ((epoch + 1) % p.validate_every == 0 or epoch + 1 == epochs):
            row.update({f"valid_{k}": v for k, v in score_model(ema.module, valid, p.batch_size).items()})
        history.append(row)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, {"run_key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                                        "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                        "rng": rng_state(), "history": history})
        if log_epochs:
            log.info("stage II epoch %d/%d: train_loss=%.4f valid_pearson=%.4f", epoch + 1, epochs,
                     row["train_loss"], row.get("valid_pearson_mean", float("nan")))
    return ema.module.eval(), history, max(0, epochs - start_epoch)


def save_model(path: Path, model: EMIFusionModel, p: Stage2Params, dims: dict[str, int]) -> None:
    state = {k: v.cpu() for k, v in model.state_dict().items()}  # loadable anywhere
    save_checkpoint(path, {"model": state, "dims": dims, "params": p.model_dump(mode="json")})


def load_fusion(path: Path) -> tuple[EMIFusionModel, Stage2Params]:
    """A saved Stage-II model and the params it was trained with (e.g. which Stage-I view it reads), in one read."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    p = Stage2Params.model_validate({**SAVED_BEFORE, **state["params"]})
    model = EMIFusionModel.from_params(p, state["dims"])
    model.load_state_dict(state["model"])
    return model.eval(), p


def load_model(path: Path) -> EMIFusionModel:
    return load_fusion(path)[0]


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


def variant_name(modalities: str, fusion: str, inputs: str, replica: int = 0) -> str:
    """A saved ablation model's file stem; ``replica`` i > 0 is the training with seed ``seed + i``."""
    return f"{modalities}-{fusion}-{inputs}" + (f"-seed{replica}" if replica else "")


def prediction_frame(model: EMIFusionModel, data: SequenceData, batch_size: int) -> pd.DataFrame:
    """id, the six intensities and the mean fusion weight per modality, one row per clip."""
    pred, weights = predict(model, data, batch_size)
    table = pd.DataFrame(pred, columns=list(EMOTIONS))
    for j, m in enumerate("VAT"):
        table[f"weight_{m}"] = weights[:, j]
    table.insert(0, "id", data.ids)
    return table
