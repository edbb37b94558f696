"""``emi stage1``: modality-text contrastive alignment (paper section 3.3, Stage I) over cached features.

Trains projection heads for vision<->text and audio<->text with symmetric InfoNCE and SGDR, then writes
the aligned feature sequences Stage II consumes (the frozen heads applied per timestep).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi.config import Params
from emi.extract import features_fingerprint, load_features
from emi.model import AlignmentModel, clip_pool
from emi.train import (SequenceData, load_checkpoint, restore_rng, rng_state, save_checkpoint, seed_everything,
                       sgdr)
from emi.utils import atomic_path, fingerprint, write_json, write_text, tracked

log = logging.getLogger(__name__)
KS = (1, 5)
NORM_EPS = 1e-6  # keeps constant feature dimensions finite after standardization
MODALITY_KEYS = ("visual", "audio", "text")


class Stage1Error(RuntimeError):
    pass


@dataclass
class Stage1Result:
    model_path: Path
    aligned_path: Path
    metrics: dict
    epochs_run: int
    seconds: float

    def tracking(self) -> dict:
        history = pd.read_csv(self.model_path.parent / "history.csv").to_dict(orient="records")
        return {"metrics": self.metrics, "history": history,
                "artifacts": [self.model_path.parent / "metrics.json", self.model_path.parent / "history.csv"]}


def feature_data(features_dir: Path, splits: tuple[str, ...] | None = None) -> tuple[SequenceData, list[str], dict]:
    fs = load_features(features_dir, splits)
    data = SequenceData(fs.ids, fs.visual, fs.audio, fs.text.astype(np.float32), fs.mask, None)
    dims = {"V": fs.dims["visual"], "A": fs.dims["audio"], "T": fs.dims["text"]}
    return data, fs.splits, dims


def _clip_vectors(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return clip_pool(batch["v"], batch["time_mask"]), clip_pool(batch["a"], batch["time_mask"])


def _pair_masks(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    m = batch["modality_mask"]
    return m[:, 0] & m[:, 2], m[:, 1] & m[:, 2]  # clips without usable text form no pair (not zero vectors)


@torch.no_grad()
def retrieval(model: AlignmentModel, data: SequenceData) -> dict[str, float]:
    """Recall@k of the clip's own transcript among all validation transcripts, v->t and a->t."""
    model.eval()
    batch = data.batch(list(range(len(data)))) if len(data) else None
    out: dict[str, float] = {}
    for name, col in (("v2t", 0), ("a2t", 1)):
        if batch is None:
            continue
        keep = batch["modality_mask"][:, col] & batch["modality_mask"][:, 2]
        v, a = _clip_vectors(batch)
        x = model.project("V" if col == 0 else "A", (v if col == 0 else a)[keep])
        t = model.project("T", batch["t"][keep])
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


@tracked("stage1")
def stage1(params: Params, features_dir: Path, model_dir: Path, aligned_dir: Path, raw_dir: Path | None = None,
           show_progress: bool = True) -> Stage1Result:
    """``raw_dir`` (default: ``features_dir/../raw``, the DVC layout) is read only when encoder blocks are
    fine-tuned (``stage1.finetune.last_k_blocks > 0``)."""
    p = params.stage1
    started = time.perf_counter()
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
        from emi.encoders import EncoderError
        from emi.finetune import Finetuner

        try:
            tuner = Finetuner(params, Path(raw_dir) if raw_dir else Path(features_dir).parent / "raw", data)
        except EncoderError as exc:  # an encoder that cannot be tuned is a Stage-I configuration error
            raise Stage1Error(str(exc)) from exc
        model.to(tuner.device)
    groups = [{"params": list(model.parameters()), "lr": p.schedule.lr_max}]
    if tuner is not None:
        groups.append({"params": tuner.parameters(), "lr": p.finetune.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
    scheduler = sgdr(optimizer, p.schedule)
    model_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = model_dir / "checkpoint.pt"
    # the features' own fingerprint too: new features must never resume an old run's checkpoint
    run_key = fingerprint({"stage1": p.model_dump(mode="json"), "seed": params.seed, "dims": dims,
                           "train": train.ids, "features": features_fingerprint(features_dir),
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
        row.update(tuner.valid_loss(model, valid_rows, p.batch_size) if tuner else _valid_loss(model, valid))
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
        data = tuner.reencode(data)  # every clip through the tuned blocks, as `emi predict` will encode new ones
        valid = data.subset(valid_rows)
        model.cpu()
    metrics = {"train_loss": history[-1]["train_loss"], **{k: v for k, v in history[-1].items() if k.startswith(
        "valid")}, **retrieval(model, valid), "temperature": round(1 / model.logit_scale.detach().item(), 5)}
    model_path = model_dir / "alignment.pt"
    norm = feature_norm(data, train_rows)
    save_checkpoint(model_path, {"model": model.state_dict(), "dims": dims, "params": p.model_dump(mode="json"),
                                 "norm": {m: [torch.from_numpy(mu), torch.from_numpy(sd)] for m, (mu, sd) in
                                          norm.items()}, "tuned_encoders": tuned})
    write_json(model_dir / "metrics.json", metrics)
    write_text(model_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    aligned_path = write_aligned(model, norm, data, splits, aligned_dir)
    seconds = time.perf_counter() - started
    log.info("stage I done in %.1f s: %s", seconds, metrics)
    return Stage1Result(model_path, aligned_path, metrics, p.schedule.epochs - start_epoch, seconds)


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
def _valid_loss(model: AlignmentModel, valid: SequenceData) -> dict[str, float]:
    if len(valid) < 2:
        return {}
    model.eval()
    batch = valid.batch(list(range(len(valid))))
    vt, at = _pair_masks(batch)
    v, a = _clip_vectors(batch)
    out = model(v, a, batch["t"], vt_mask=vt, at_mask=at)
    return {"valid_loss": float(out["loss"]), "valid_loss_vt": float(out["loss_vt"]),
            "valid_loss_at": float(out["loss_at"])}


def feature_norm(data: SequenceData, rows: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension mean/std of the encoder features over the training clips (frames for V/A, clips for T)."""
    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.mean(0).astype(np.float32), (x.std(0) + NORM_EPS).astype(np.float32)

    return {"V": stats(np.concatenate([data.visual[i] for i in rows])),
            "A": stats(np.concatenate([data.audio[i] for i in rows])),
            "T": stats(data.text[rows])}


@torch.no_grad()
def project_clip(model: AlignmentModel, norm: dict, v: np.ndarray, a: np.ndarray, t: np.ndarray) -> dict:
    """Both views of one clip: the frozen Stage-I heads per timestep (aligned) and the standardized encoder
    features (encoder)."""
    model.eval()
    aligned = {"V": model.project("V", torch.from_numpy(v)).numpy(), "A": model.project("A", torch.from_numpy(a)).numpy(),
               "T": model.project("T", torch.from_numpy(t)).numpy()}
    encoder = {m: (x - norm[m][0]) / norm[m][1] for m, x in (("V", v), ("A", a), ("T", t))}
    return {"aligned": aligned, "encoder": encoder}


def write_aligned(model: AlignmentModel, norm: dict, data: SequenceData, splits: list[str], aligned_dir: Path) -> Path:
    views = [project_clip(model, norm, data.visual[i], data.audio[i], data.text[i]) for i in range(len(data))]
    arrays = {"ids": np.array(data.ids), "splits": np.array(splits), "mask": data.mask,
              "lengths": np.array([data.visual[i].shape[0] for i in range(len(data))], np.int64)}
    for view in ("aligned", "encoder"):
        arrays[f"{view}_visual"] = np.concatenate([c[view]["V"] for c in views]).astype(np.float32)
        arrays[f"{view}_audio"] = np.concatenate([c[view]["A"] for c in views]).astype(np.float32)
        arrays[f"{view}_text"] = np.stack([c[view]["T"] for c in views]).astype(np.float32)
    path = Path(aligned_dir) / "aligned.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def compose(view: dict[str, np.ndarray], inputs: str) -> dict[str, np.ndarray]:
    """Stage II's input per modality: aligned, encoder, or both concatenated along features."""
    if inputs == "both":
        return {m: np.concatenate([view[f"aligned_{m}"], view[f"encoder_{m}"]], axis=-1) for m in MODALITY_KEYS}
    return {m: view[f"{inputs}_{m}"] for m in MODALITY_KEYS}


def load_aligned(path: Path, inputs: str = "aligned") -> tuple[SequenceData, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        ids, splits, lengths = [str(i) for i in z["ids"]], [str(s) for s in z["splits"]], z["lengths"]
        x = compose({k: z[k] for k in z.files}, inputs)
        cuts = np.cumsum(lengths)[:-1]
        return SequenceData(ids, np.split(x["visual"], cuts), np.split(x["audio"], cuts), x["text"], z["mask"],
                            None), splits


def load_tuned_encoders(path: Path) -> dict | None:
    """The fine-tuned encoder blocks a Stage-I model carries (None when only its heads were trained)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("tuned_encoders")


def load_alignment(path: Path) -> tuple[AlignmentModel, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The frozen Stage-I heads and the encoder-feature standardization fitted on the training split."""
    from emi.config import Stage1Params

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = AlignmentModel.from_params(Stage1Params.model_validate(state["params"]), state["dims"])
    model.load_state_dict(state["model"])
    norm = {m: (mu.numpy(), sd.numpy()) for m, (mu, sd) in state["norm"].items()}
    return model.eval(), norm
