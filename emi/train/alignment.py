"""Stage I (paper section 3.3): modality-text contrastive alignment.

Projection heads for vision<->text and audio<->text trained with symmetric InfoNCE and SGDR over the cached
features (optionally with the last k encoder blocks, see ``emi.train.finetune``). Applying a trained Stage I
(the aligned sequences Stage II reads, new clips) is ``emi.train.projection``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emi.config import Params, Stage1Params
from emi.features.store import load_features
from emi.model import AlignmentModel, clip_pool
from emi.paths import decoded_dir
from emi.data.sequences import SequenceData
from emi.train.loop import load_checkpoint, restore_rng, rng_state, save_checkpoint, seed_everything, sgdr
from emi.utils import fingerprint

log = logging.getLogger(__name__)
KS = (1, 5)
REENCODED_DIR = "reencoded"  # beside the checkpoint: the fine-tuned encoders' features, read back per clip
NORM_EPS = 1e-6  # keeps constant feature dimensions finite after standardization


class Stage1Error(RuntimeError):
    pass


@dataclass
class Alignment:
    """A trained Stage I: the heads, the encoder-feature standardization, the (re-encoded) features and history."""

    model: AlignmentModel
    norm: dict[str, tuple[np.ndarray, np.ndarray]]
    data: SequenceData
    splits: list[str]
    dims: dict[str, int]
    history: list[dict]
    metrics: dict
    tuned: dict | None
    epochs_run: int


def feature_data(features_dir: Path, splits: tuple[str, ...] | None = None) -> tuple[SequenceData, list[str], dict]:
    fs = load_features(features_dir, splits)
    data = SequenceData(fs.ids, fs.visual, fs.audio, fs.text.astype(np.float32), fs.mask, None, fs.cues)
    dims = {"V": fs.dims["visual"], "A": fs.dims["audio"], "T": fs.dims["text"]}
    return data, fs.splits, dims


def _clip_vectors(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return clip_pool(batch["v"], batch["time_mask"]), clip_pool(batch["a"], batch["time_mask"])


def _pair_masks(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    m = batch["modality_mask"]
    return m[:, 0] & m[:, 2], m[:, 1] & m[:, 2]  # clips without usable text form no pair (not zero vectors)


@torch.no_grad()
def pooled(data: SequenceData, batch_size: int) -> dict[str, torch.Tensor] | None:
    """Clip vectors of every clip (time-pooled V and A, T, modality masks), built batch by batch: the contrastive
    validation metrics compare all clips with all, but never hold all sequences at once."""
    if not len(data):
        return None
    parts = {"v": [], "a": [], "t": [], "modality_mask": []}
    for batch in data.chunks(batch_size):
        v, a = _clip_vectors(batch)
        for key, value in (("v", v), ("a", a), ("t", batch["t"]), ("modality_mask", batch["modality_mask"])):
            parts[key].append(value)
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def retrieval(model: AlignmentModel, data: SequenceData, batch_size: int) -> dict[str, float]:
    """Recall@k of the clip's own transcript among all validation transcripts, v->t and a->t."""
    model.eval()
    clips = pooled(data, batch_size)
    out: dict[str, float] = {}
    for name, col in (("v2t", 0), ("a2t", 1)):
        if clips is None:
            continue
        keep = clips["modality_mask"][:, col] & clips["modality_mask"][:, 2]
        x = model.project("V" if col == 0 else "A", clips["v" if col == 0 else "a"][keep])
        t = model.project("T", clips["t"][keep])
        n = int(keep.sum())
        out[f"{name}_pairs"] = n
        if n < 2:
            continue
        sims = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
        rank = (sims > sims.diag().unsqueeze(1)).sum(1)  # how many texts beat the true one
        for k in KS:
            out[f"{name}_recall@{k}"] = round(float((rank < k).float().mean()), 4)
            out[f"{name}_chance@{k}"] = round(min(1.0, k / n), 4)
    return out


def train_alignment(params: Params, features_dir: Path, features_key: str, ckpt_path: Path, raw_dir: Path,
                    show_progress: bool = True) -> Alignment:
    """Train the heads (and the tuned encoder blocks) on the train split; resume from ``ckpt_path`` when it holds
    an unfinished run of the same inputs (``features_key`` fingerprints the feature store)."""
    p = params.stage1
    data, splits, dims = feature_data(features_dir)
    train_rows = [i for i, s in enumerate(splits) if s == "train"]
    valid_rows = [i for i, s in enumerate(splits) if s == "valid"]
    if len(train_rows) < 2:
        raise Stage1Error(f"{features_dir}: stage I needs at least 2 training clips, found {len(train_rows)}")
    train, valid = data.subset(train_rows), data.subset(valid_rows)

    generator = seed_everything(params.seed)
    model = AlignmentModel.from_params(p, dims)
    tuner = None
    if p.finetune.last_k_blocks:
        from emi.encoders.base import EncoderError
        from emi.train.finetune import Finetuner  # lazy: decoding and the encoders only when tuning

        try:
            tuner = Finetuner(params, Path(raw_dir), data, decoded_dir(features_dir))
        except EncoderError as exc:  # an encoder that cannot be tuned is a Stage-I configuration error
            raise Stage1Error(str(exc)) from exc
        model.to(tuner.device)
    groups = [{"params": list(model.parameters()), "lr": p.schedule.lr_max}]
    if tuner is not None:
        groups.append({"params": tuner.parameters(), "lr": p.finetune.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
    scheduler = sgdr(optimizer, p.schedule)
    # the features' own fingerprint too: new features must never resume an old run's checkpoint
    run_key = fingerprint({"stage1": p.model_dump(mode="json"), "seed": params.seed, "dims": dims,
                           "train": train.ids, "features": features_key,
                           "encoders": params.extract.model_dump(mode="json") if tuner else None})
    history: list[dict] = []
    start_epoch = 0
    state = load_checkpoint(ckpt_path)
    if state is not None and state.get("run_key") == run_key:
        model.load_state_dict(state["model"])
        if tuner is not None:
            tuner.load(state["tuned"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        restore_rng(state["rng"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        log.info("stage I: resuming after epoch %d", start_epoch)

    for epoch in range(start_epoch, p.schedule.epochs):
        if tuner is not None:
            losses = tuner.train_epoch(model, optimizer, train_rows, p.batch_size, generator)
        else:
            losses = _train_epoch(model, optimizer, train, p.batch_size, generator)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses))}
        row.update(tuner.valid_loss(model, valid_rows, p.batch_size) if tuner else
                   _valid_loss(model, valid, p.batch_size))
        history.append(row)
        save_checkpoint(ckpt_path, {"run_key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                                    "tuned": tuner.tuned() if tuner else None,
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "generator": generator.get_state(), "rng": rng_state(), "history": history})
        if show_progress:
            log.info("stage I epoch %d/%d: %s", epoch + 1, p.schedule.epochs,
                     ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))

    tuned = None
    if tuner is not None:
        tuned = tuner.tuned()
        # every clip through the tuned blocks, as `emi predict` will encode new ones (kept on disk until stage1 has
        # written the aligned file, see REENCODED_DIR)
        data = tuner.reencode(data, Path(ckpt_path).parent / REENCODED_DIR)
        valid = data.subset(valid_rows)
        model.cpu()
    metrics = {"train_loss": history[-1]["train_loss"], **{k: v for k, v in history[-1].items() if k.startswith(
        "valid")}, **retrieval(model, valid, p.batch_size), "temperature": round(1 / model.logit_scale.detach().item(), 5)}
    return Alignment(model, feature_norm(data, train_rows), data, splits, dims, history, metrics, tuned,
                     p.schedule.epochs - start_epoch)


def save_alignment(path: Path, alignment: Alignment, p: Stage1Params) -> None:
    save_checkpoint(path, {"model": alignment.model.state_dict(), "dims": alignment.dims,
                           "params": p.model_dump(mode="json"),
                           "norm": {m: [torch.from_numpy(mu), torch.from_numpy(sd)] for m, (mu, sd) in
                                    alignment.norm.items()}, "tuned_encoders": alignment.tuned})


def _train_epoch(model: AlignmentModel, optimizer: torch.optim.Optimizer, train: SequenceData, batch_size: int,
                 generator: torch.Generator) -> list[float]:
    """Heads only, over the cached features."""
    model.train()
    losses = []
    for batch in train.batches(batch_size, generator):
        vt, at = _pair_masks(batch)
        v, a = _clip_vectors(batch)
        loss = model(v, a, batch["t"], vt_mask=vt, at_mask=at)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def _valid_loss(model: AlignmentModel, valid: SequenceData, batch_size: int) -> dict[str, float]:
    if len(valid) < 2:
        return {}
    model.eval()
    clips = pooled(valid, batch_size)
    vt, at = _pair_masks(clips)
    out = model(clips["v"], clips["a"], clips["t"], vt_mask=vt, at_mask=at)
    return {"valid_loss": float(out["loss"]), "valid_loss_vt": float(out["loss_vt"]),
            "valid_loss_at": float(out["loss_at"])}


def feature_norm(data: SequenceData, rows: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension mean/std of the encoder features over the training clips (frames for V/A, clips for T),
    accumulated clip by clip in float64 (the training features are never all in memory)."""
    def stats(seqs) -> tuple[np.ndarray, np.ndarray]:
        n, total, squares = 0, 0.0, 0.0
        for x in seqs:
            x = x.astype(np.float64)
            n, total, squares = n + x.shape[0], total + x.sum(0), squares + np.square(x).sum(0)
        mean = total / max(n, 1)
        std = np.sqrt(np.maximum(squares / max(n, 1) - np.square(mean), 0.0))
        return mean.astype(np.float32), (std + NORM_EPS).astype(np.float32)

    return {"V": stats(data.visual[i] for i in rows), "A": stats(data.audio[i] for i in rows),
            "T": stats([data.text[rows]])}
