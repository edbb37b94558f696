"""Robustness: the trained pipeline on validation clips decoded again and damaged (occluded face, noisy audio,
missing audio, missing text). Does the fusion weight of a damaged modality fall, and does quality fusion lose
less than average fusion?"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.config import EMOTIONS, MODALITIES, RobustnessParams
from emi.data.dataset import Clip
from emi.featurize import OK, Damage, Featurizer
from emi.metrics import scores
from emi.model import EMIFusionModel
from emi.train.projection import aligned_inputs, load_alignment
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


def condition_chunks(featurizer: Featurizer, clips: list[Clip], texts: dict[str, str | None],
                     damages: dict[str, Damage | None], rows: np.ndarray, seed: int, chunk_size: int,
                     progress: Progress | None = None) -> Iterator[dict[str, SequenceData]]:
    """Encoder features of ``clips`` under each damage (applied to ``rows`` only), by the one featurize path, one
    chunk of ``chunk_size`` clips at a time (memory holds a chunk, whatever the size of the validation split).

    Each clip is decoded once and only the modalities a damage touches are encoded again: the same numbers as
    ``featurizer(damaged clips, texts, damage=damage)`` at a fraction of the cost."""
    rngs = {name: np.random.default_rng(seed) for name in damages}  # one stream per condition, in clip order
    chosen = set(rows.tolist())
    task = progress.add_task("robustness features", total=len(clips)) if progress else None
    text_dim = featurizer.cfg.text.dim
    for start in range(0, len(clips), chunk_size):
        chunk = clips[start:start + chunk_size]
        decoded = featurizer.decode(chunk, MODALITIES)
        broken = [f"{d.clip.id} ({d.detail})" for d in decoded if d.visual_status == "error"]
        if broken:
            raise RobustnessError(f"validation clip(s) cannot be decoded again: {', '.join(broken)}")
        clean = featurizer.encode(decoded, texts, MODALITIES)
        out = {}
        for name, damage in damages.items():
            cols = {m: list(getattr(clean, m)) for m in MODALITIES}
            cues = {m: list(c) for m, c in clean.cues.items()}
            status = {m: list(clean.status[m]) for m in MODALITIES}
            idx = [j for j in range(len(chunk)) if start + j in chosen] if damage else []
            if idx:
                touched = damage.touched()
                redone = featurizer.encode([decoded[j] for j in idx], texts, touched, damage, rngs[name])
                for m in touched:
                    for k, j in enumerate(idx):
                        cols[m][j], status[m][j] = getattr(redone, m)[k], redone.status[m][k]
                        if m in cues:
                            cues[m][j] = redone.cues[m][k]
            out[name] = SequenceData(
                [c.id for c in chunk], cols["visual"], cols["audio"],
                np.stack(cols["text"]).astype(np.float32) if cols["text"] else np.zeros((0, text_dim), np.float32),
                np.array([[s == OK for s in status[m]] for m in MODALITIES], bool).T.reshape(-1, 3), None, cues)
        if progress:
            progress.advance(task, len(chunk))
        yield out


def condition_features(featurizer: Featurizer, clips: list[Clip], texts: dict[str, str | None],
                       damages: dict[str, Damage | None], rows: np.ndarray, seed: int,
                       chunk_size: int) -> dict[str, SequenceData]:
    """``condition_chunks`` joined: every clip's features per condition (for checks on a few clips)."""
    parts = list(condition_chunks(featurizer, clips, texts, damages, rows, seed, chunk_size))
    return {name: SequenceData([i for p in parts for i in p[name].ids],
                               [x for p in parts for x in p[name].visual], [x for p in parts for x in p[name].audio],
                               np.concatenate([p[name].text for p in parts]),
                               np.concatenate([p[name].mask for p in parts]), None,
                               {m: [x for p in parts for x in p[name].cues[m]] for m in parts[0][name].cues})
            for name in damages}


def robustness(featurizer: Featurizer, r: RobustnessParams, seed: int, valid: SequenceData, clips: list[Clip],
               texts: dict[str, str | None], alignment_path: Path, models: dict[str, tuple[EMIFusionModel, str]],
               batch_size: int, show_progress: bool = False) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Condition x fusion: mean Pearson and MSE over all validation clips (the damaged ones included) and the mean
    fusion weight per modality over the damaged clips (the same clips under ``clean``, for comparison)."""
    rows = damaged_rows(len(clips), r.rate, seed)
    alignment = load_alignment(alignment_path)
    parts: dict[str, list[pd.DataFrame]] = {f"{name}/{fusion}": [] for name in CONDITIONS for fusion in models}
    with Progress(disable=not show_progress) as progress:
        for chunk in condition_chunks(featurizer, clips, texts, conditions(r), rows, seed,
                                      featurizer.cfg.shard_size, progress):
            for name in CONDITIONS:
                for fusion, (model, inputs) in models.items():
                    parts[f"{name}/{fusion}"].append(
                        prediction_frame(model, aligned_inputs(chunk[name], alignment, inputs), batch_size))
    predictions = {key: pd.concat(frames, ignore_index=True) for key, frames in parts.items()}
    table = []
    for name in CONDITIONS:
        for fusion in models:
            out = predictions[f"{name}/{fusion}"]
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
