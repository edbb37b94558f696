"""Robustness: the trained pipeline on validation clips decoded again and damaged (occluded face, noisy audio,
missing audio, missing text). Does the fusion weight of a damaged modality fall, and does quality fusion lose
less than average fusion?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.config import EMOTIONS, MODALITIES, RobustnessParams
from emi.data.dataset import Clip
from emi.featurize import OK, Damage, Featurizer
from emi.metrics import scores
from emi.model import EMIFusionModel
from emi.train.projection import aligned_inputs
from emi.train.fusion import prediction_frame
from emi.train.loop import SequenceData

CONDITIONS = ("clean", "occluded_face", "noisy_audio", "missing_audio", "missing_text")
DAMAGED_MODALITY = {"occluded_face": "V", "noisy_audio": "A", "missing_audio": "A", "missing_text": "T"}
FUSIONS = ("quality", "average")


class RobustnessError(RuntimeError):
    """Validation clips that cannot be decoded again (the dataset changed since extract); the message names them."""


def conditions(r: RobustnessParams) -> dict[str, Damage | None]:
    return {"clean": None, "occluded_face": Damage(occlusion_box=tuple(r.occlusion_box)),
            "noisy_audio": Damage(noise_snr_db=r.noise_snr_db), "missing_audio": Damage(drop_audio=True),
            "missing_text": Damage(drop_text=True)}


def damaged_rows(n: int, rate: float, seed: int) -> np.ndarray:
    """The clips every damage condition is applied to: the same round(rate * n) clips, chosen by the seed."""
    k = round(rate * n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k else np.zeros(0, int)


def condition_features(featurizer: Featurizer, clips: list[Clip], texts: dict[str, str | None],
                       damages: dict[str, Damage | None], rows: np.ndarray, seed: int, chunk_size: int,
                       progress: Progress | None = None) -> dict[str, SequenceData]:
    """Encoder features of ``clips`` under each damage (applied to ``rows`` only), by the one featurize path.

    Each clip is decoded once and only the modalities a damage touches are encoded again: the same numbers as
    ``featurizer(damaged clips, texts, damage=damage)`` at a fraction of the cost. Chunks of ``chunk_size`` clips
    keep memory bounded on a full-size validation split."""
    rngs = {name: np.random.default_rng(seed) for name in damages}  # one stream per condition, in clip order
    chosen = set(rows.tolist())
    out = {name: {"cols": {m: [] for m in MODALITIES}, "ok": {m: [] for m in MODALITIES}} for name in damages}
    task = progress.add_task("robustness features", total=len(clips)) if progress else None
    for start in range(0, len(clips), chunk_size):
        chunk = clips[start:start + chunk_size]
        decoded = featurizer.decode(chunk, MODALITIES)
        broken = [f"{d.clip.id} ({d.detail})" for d in decoded if d.visual_status == "error"]
        if broken:
            raise RobustnessError(f"validation clip(s) cannot be decoded again: {', '.join(broken)}")
        clean = featurizer.encode(decoded, texts, MODALITIES)
        for name, damage in damages.items():
            cols = {m: list(getattr(clean, m)) for m in MODALITIES}
            status = {m: list(clean.status[m]) for m in MODALITIES}
            idx = [j for j in range(len(chunk)) if start + j in chosen] if damage else []
            if idx:
                touched = damage.touched()
                redone = featurizer.encode([decoded[j] for j in idx], texts, touched, damage, rngs[name])
                for m in touched:
                    for k, j in enumerate(idx):
                        cols[m][j], status[m][j] = getattr(redone, m)[k], redone.status[m][k]
            for m in MODALITIES:
                out[name]["cols"][m] += cols[m]
                out[name]["ok"][m] += [s == OK for s in status[m]]
        if progress:
            progress.advance(task, len(chunk))
    ids = [c.id for c in clips]
    text_dim = featurizer.cfg.text.dim
    return {name: SequenceData(
        ids, f["cols"]["visual"], f["cols"]["audio"],
        np.stack(f["cols"]["text"]).astype(np.float32) if f["cols"]["text"] else np.zeros((0, text_dim), np.float32),
        np.array([f["ok"][m] for m in MODALITIES], bool).T.reshape(-1, 3), None) for name, f in out.items()}


def robustness(featurizer: Featurizer, r: RobustnessParams, seed: int, valid: SequenceData, clips: list[Clip],
               texts: dict[str, str | None], alignment_path: Path, models: dict[str, tuple[EMIFusionModel, str]],
               batch_size: int, show_progress: bool = False) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Condition x fusion: mean Pearson and MSE over all validation clips (the damaged ones included) and the mean
    fusion weight per modality over the damaged clips (the same clips under ``clean``, for comparison)."""
    rows = damaged_rows(len(clips), r.rate, seed)
    with Progress(disable=not show_progress) as progress:
        feats = condition_features(featurizer, clips, texts, conditions(r), rows, seed,
                                   featurizer.cfg.shard_size, progress)
    table, predictions = [], {}
    for name in CONDITIONS:
        for fusion, (model, inputs) in models.items():
            out = prediction_frame(model, aligned_inputs(feats[name], alignment_path, inputs), batch_size)
            predictions[f"{name}/{fusion}"] = out
            pred = out[list(EMOTIONS)].to_numpy(float)
            s = scores(pred, valid.labels)
            w = out.iloc[rows][[f"weight_{m}" for m in "VAT"]].mean()  # NaN when no clip is damaged
            table.append({"condition": name, "fusion": fusion, "pearson_mean": s["pearson_mean"], "mse": s["mse"],
                          "weight_V": float(w.iloc[0]), "weight_A": float(w.iloc[1]), "weight_T": float(w.iloc[2]),
                          "n_damaged": 0 if name == "clean" else len(rows), "n": len(clips)})
    table = pd.DataFrame(table)
    clean = table[table.condition == "clean"].set_index("fusion")["pearson_mean"]
    table.insert(3, "delta_pearson", table["pearson_mean"] - table["fusion"].map(clean))
    return table, predictions
