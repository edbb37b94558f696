"""Robustness: the trained pipeline on validation clips decoded again and damaged (occluded face, noisy audio,
missing audio, missing text: each on ``rate`` of the clips; and ``mixed``: ``mixed_rate`` of the clips, one
random damage each). Does the fusion weight of a damaged modality fall, and how much of average fusion's loss
does the model's fusion (quality in the paper) avoid, over several training seeds?"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.config import DAMAGE_KINDS, EMOTIONS, MODALITIES, Params, RobustnessParams, Stage2Params
from emi.data.dataset import Clip, list_clips
from emi.encoders.registry import load_featurizer
from emi.features.decode import OK
from emi.features.damage import DAMAGED_MODALITY, Damage, damage_of
from emi.features.decoded import DecodedStore
from emi.features.featurize import Featurizer
from emi.features.store import load_features
from emi.evaluation.seeds import REFERENCE_FUSION, loss_avoided, mean_sd, model_fusion, paired_difference
from emi.metrics import scores
from emi.model import EMIFusionModel
from emi.paths import Layout, decoded_dir
from emi.train.projection import aligned_inputs, load_alignment, load_tuned_encoders
from emi.train.fusion import load_fusion, prediction_frame, variant_name
from emi.data.sequences import SequenceData

MIXED = "mixed"
CONDITIONS = ("clean", *DAMAGE_KINDS, MIXED)
"""Each damage kind is also a condition applied to ``rate`` of the clips."""
DROPPED = "dropped"
"""Prediction key suffix: the condition with each damaged clip's damaged modality marked unavailable."""


def compared_fusions(fusion: str) -> tuple[str, ...]:
    """The fusions the robustness table compares: the model's and the plain mean (once if they are the same)."""
    return tuple(dict.fromkeys((fusion, REFERENCE_FUSION)))


class RobustnessError(RuntimeError):
    """Validation clips that cannot be decoded again (the dataset changed since extract), or a model the comparison
    needs is missing; the message names them."""


def damages(r: RobustnessParams) -> dict[str, Damage]:
    """Each damage kind, as the featurize path applies it, with the robustness conditions' box and SNR."""
    return {kind: damage_of(kind, r.occlusion_box, r.noise_snr_db) for kind in DAMAGE_KINDS}


def damaged_rows(n: int, rate: float, seed: int) -> np.ndarray:
    """The clips every damage condition is applied to: the same round(rate * n) clips, chosen by the seed."""
    k = round(rate * n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k else np.zeros(0, int)


def mixed_damage(n: int, rate: float, seed: int) -> dict[int, str]:
    """The mixed condition: round(rate * n) clips chosen by the seed, each with one damage kind drawn (uniformly,
    by the same seed) from ``DAMAGE_KINDS``; row -> kind, in row order."""
    rng = np.random.default_rng(seed)
    k = round(rate * n)
    rows = np.sort(rng.choice(n, size=k, replace=False)) if k else np.zeros(0, int)
    kinds = rng.choice(len(DAMAGE_KINDS), size=k)
    return {int(row): DAMAGE_KINDS[kind] for row, kind in zip(rows, kinds)}


def seed_models(models_dir: Path, model: EMIFusionModel, saved: Stage2Params,
                seeds: int) -> tuple[dict[str, list[tuple[EMIFusionModel, str]]], list[str]]:
    """Per compared fusion, one (model, inputs) per training seed i < ``seeds``: the Stage-II model itself where it
    is that fusion's seed 0, the ablation stage's models of the same modalities and inputs otherwise
    (``models_dir``: ``variant_name(modalities, fusion, inputs, i)``), and where each came from. A missing one is an
    error naming the stage that makes it: evaluation never trains."""
    models: dict[str, list] = {fusion: [] for fusion in compared_fusions(saved.fusion)}
    sources = []
    for i in range(seeds):
        for fusion in models:
            if fusion == saved.fusion and i == 0:
                models[fusion].append((model, saved.inputs))
                continue
            path = Path(models_dir) / f"{variant_name(''.join(saved.modalities), fusion, saved.inputs, i)}.pt"
            if not path.is_file():
                raise RobustnessError(f"{path}: not found; the ablation stage makes it (`emi ablate`, or "
                                      f"`dvc repro ablate`)")
            m, p = load_fusion(path)
            models[fusion].append((m, p.inputs))
            sources.append(f"{fusion} seed {i}: `{path}`")
    return models, sources


def damage_plan(r: RobustnessParams, n: int, seed: int) -> dict[str, dict[int, str]]:
    """Per condition, which of ``n`` clips get which damage kind: none under ``clean``; each kind on the same
    ``damaged_rows(n, r.rate, seed)``; ``mixed_damage(n, r.mixed_rate, seed)`` under ``mixed``."""
    rows = damaged_rows(n, r.rate, seed).tolist()
    return {"clean": {}, **{kind: dict.fromkeys(rows, kind) for kind in DAMAGE_KINDS},
            MIXED: mixed_damage(n, r.mixed_rate, seed)}


def condition_chunks(featurizer: Featurizer, clips: list[Clip], text_vectors: dict[str, np.ndarray | None],
                     kinds: dict[str, Damage], plan: dict[str, dict[int, str]], seed: int, chunk_size: int,
                     progress: Progress | None = None) -> Iterator[dict[str, SequenceData]]:
    """Encoder features of ``clips`` under each condition of ``plan`` (clip row -> damage kind of ``kinds``), by
    the one featurize path, one chunk of ``chunk_size`` clips at a time (memory holds a chunk, whatever the size
    of the validation split). Text is the vector extract stored for each clip (``text_vectors``): no damage here
    changes a transcript, only drops it.

    Each clip is decoded once and only the modalities a damage touches are encoded again: the same numbers as
    ``featurizer(damaged clips, texts, damage=damage)`` at a fraction of the cost. Random damage (noise) draws
    from one stream per condition and kind, in clip order."""
    rngs = {(name, kind): np.random.default_rng(seed) for name in plan for kind in kinds}
    task = progress.add_task("robustness features", total=len(clips)) if progress else None
    text_dim = featurizer.cfg.text.dim
    for start in range(0, len(clips), chunk_size):
        chunk = clips[start:start + chunk_size]
        decoded = featurizer.decode(chunk, MODALITIES)
        broken = [f"{d.clip.id} ({d.detail})" for d in decoded if d.visual_status == "error"]
        if broken:
            raise RobustnessError(f"validation clip(s) cannot be decoded again: {', '.join(broken)}")
        clean = featurizer.encode(decoded, {}, MODALITIES, text_vectors=text_vectors)
        out = {}
        for name, assigned in plan.items():
            cols = {m: list(getattr(clean, m)) for m in MODALITIES}
            cues = {m: list(c) for m, c in clean.cues.items()}
            status = {m: list(clean.status[m]) for m in MODALITIES}
            for kind, damage in kinds.items():
                idx = [j for j in range(len(chunk)) if assigned.get(start + j) == kind]
                if not idx:
                    continue
                touched = damage.touched()
                redone = featurizer.encode([decoded[j] for j in idx], {}, touched, damage, rngs[(name, kind)],
                                           text_vectors)
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


def condition_features(featurizer: Featurizer, clips: list[Clip], text_vectors: dict[str, np.ndarray | None],
                       kinds: dict[str, Damage], plan: dict[str, dict[int, str]], seed: int,
                       chunk_size: int) -> dict[str, SequenceData]:
    """``condition_chunks`` joined: every clip's features per condition (for checks on a few clips)."""
    parts = list(condition_chunks(featurizer, clips, text_vectors, kinds, plan, seed, chunk_size))
    return {name: SequenceData([i for p in parts for i in p[name].ids],
                               [x for p in parts for x in p[name].visual], [x for p in parts for x in p[name].audio],
                               np.concatenate([p[name].text for p in parts]),
                               np.concatenate([p[name].mask for p in parts]), None,
                               {m: [x for p in parts for x in p[name].cues[m]] for m in parts[0][name].cues})
            for name in plan}


def masked(damage: Damage) -> bool:
    """Whether a damage removes its modality outright (no audio track, no transcript): the modality mask says so
    and both fusions give it weight exactly 0, so dropping it changes nothing."""
    return damage.drop_audio or damage.drop_text


def drop_damaged(data: SequenceData, assigned: dict[int, str], start: int = 0) -> SequenceData:
    """``data`` (the clips from row ``start`` on) with the modality each damaged clip lost (``assigned``: row ->
    damage kind) marked unavailable: what quality fusion predicts when its scorer gives the damaged modality
    weight 0, the most that lowering that weight can do. Text and features are left as they are."""
    mask = data.mask.copy()
    for row, kind in assigned.items():
        if start <= row < start + len(data):
            mask[row - start, "VAT".index(DAMAGED_MODALITY[kind])] = False
    return replace(data, mask=mask)


def _hybrid(clean: pd.DataFrame, damaged: pd.DataFrame, rows: list[int]) -> np.ndarray:
    """Clean predictions with ``rows`` taken from ``damaged``: the loss those clips alone cause."""
    out = clean[list(EMOTIONS)].to_numpy(float).copy()
    out[rows] = damaged[list(EMOTIONS)].to_numpy(float)[rows]
    return out


@dataclass
class Robustness:
    """What ``robustness`` measured, one row per training seed: ``runs`` (condition x fusion x seed: scores over
    all validation clips, weights over the damaged ones, and ``delta_pearson_dropped``, the change had the
    damaged modality been dropped instead), ``mixed`` (damage kind x fusion x seed, the mixed condition's clips
    of that kind: the damaged modality's weight there and on the same clips clean, ``delta_pearson_kind``, the
    change in mean Pearson when only those clips are damaged, and ``delta_pearson_kind_dropped``, the same with
    their damaged modality dropped) and each model's predictions (``<condition>/<fusion>/<seed>``, and
    ``<condition>:dropped/<fusion>/<seed>``)."""

    runs: pd.DataFrame
    mixed: pd.DataFrame
    predictions: dict[str, pd.DataFrame]


def _weights(frame: pd.DataFrame, rows: list[int]) -> list[float]:
    return [float(x) for x in frame.iloc[rows][[f"weight_{m}" for m in "VAT"]].mean()]  # NaN without rows


def robustness(featurizer: Featurizer, r: RobustnessParams, seed: int, valid: SequenceData, clips: list[Clip],
               text_vectors: dict[str, np.ndarray | None], alignment_path: Path,
               models: dict[str, list[tuple[EMIFusionModel, str]]], batch_size: int,
               show_progress: bool = False) -> Robustness:
    """Condition x fusion x training seed (``models``: per fusion, one (model, inputs) per seed; the damage is
    the same for every seed, chosen with ``seed``): mean Pearson and MSE over all validation clips (the damaged
    ones included), the mean fusion weight per modality over the damaged clips (for ``clean``, the clips the
    all-clips conditions damage) and ``weight_damaged``, the mean weight of the modality each damaged clip lost.

    Where a loss comes from: a condition with damage the mask does not say (a covered face, noise) is also
    predicted with the damaged modality dropped (``drop_damaged``), and the mixed condition's loss is split by
    damage kind (only that kind's clips damaged, the rest clean)."""
    plan, kinds = damage_plan(r, len(clips), seed), damages(r)
    alignment = load_alignment(alignment_path)
    droppable = [name for name in CONDITIONS if any(not masked(kinds[k]) for k in plan[name].values())]
    names = [*CONDITIONS, *(f"{name}:{DROPPED}" for name in droppable)]
    keys = [(name, fusion, k) for name in names for fusion in models for k in range(len(models[fusion]))]
    parts: dict[tuple, list[pd.DataFrame]] = {key: [] for key in keys}
    with Progress(disable=not show_progress) as progress:
        start = 0
        for chunk in condition_chunks(featurizer, clips, text_vectors, kinds, plan, seed, featurizer.cfg.shard_size,
                                      progress):
            chunk |= {f"{name}:{DROPPED}": drop_damaged(chunk[name], plan[name], start) for name in droppable}
            for name, fusion, k in keys:
                model, inputs = models[fusion][k]
                parts[(name, fusion, k)].append(
                    prediction_frame(model, aligned_inputs(chunk[name], alignment, inputs), batch_size))
            start += len(chunk["clean"])
    predictions = {key: pd.concat(frames, ignore_index=True) for key, frames in parts.items()}

    def pearson(predicted: pd.DataFrame | np.ndarray) -> float:
        values = predicted[list(EMOTIONS)].to_numpy(float) if isinstance(predicted, pd.DataFrame) else predicted
        return scores(values, valid.labels)["pearson_mean"]
    clean_score = {(fusion, k): pearson(predictions[("clean", fusion, k)]) for fusion in models
                   for k in range(len(models[fusion]))}
    clean_rows = damaged_rows(len(clips), r.rate, seed).tolist()
    runs, mixed = [], []
    for name, fusion, k in [key for key in keys if key[0] in CONDITIONS]:
        out = predictions[(name, fusion, k)]
        s = scores(out[list(EMOTIONS)].to_numpy(float), valid.labels)
        base = clean_score[(fusion, k)]
        dropped = predictions.get((f"{name}:{DROPPED}", fusion, k), out)  # masked damage: already dropped
        rows = sorted(plan[name]) if name != "clean" else clean_rows
        damaged = [out.iloc[i][f"weight_{DAMAGED_MODALITY[kind]}"] for i, kind in sorted(plan[name].items())]
        runs.append({"condition": name, "fusion": fusion, "seed": k, "pearson_mean": s["pearson_mean"],
                     "delta_pearson": s["pearson_mean"] - base, "mse": s["mse"],
                     **dict(zip(("weight_V", "weight_A", "weight_T"), _weights(out, rows))),
                     "weight_damaged": float(np.mean(damaged)) if damaged else float("nan"),
                     "delta_pearson_dropped": pearson(dropped) - base,
                     "n_damaged": len(plan[name]), "n": len(clips)})
        if name == MIXED:
            clean = predictions[("clean", fusion, k)]
            for kind in DAMAGE_KINDS:
                hit = [i for i, kd in sorted(plan[name].items()) if kd == kind]
                col = f"weight_{DAMAGED_MODALITY[kind]}"
                mixed.append({"damage": kind, "modality": DAMAGED_MODALITY[kind], "masked": masked(kinds[kind]),
                              "fusion": fusion, "seed": k,
                              "n": len(hit), "weight_clean": float(clean.iloc[hit][col].mean()) if hit else np.nan,
                              "weight_damaged": float(out.iloc[hit][col].mean()) if hit else np.nan,
                              "delta_pearson_kind": pearson(_hybrid(clean, out, hit)) - base if hit else np.nan,
                              "delta_pearson_kind_dropped": pearson(_hybrid(clean, dropped, hit)) - base
                              if hit else np.nan})
    return Robustness(pd.DataFrame(runs), pd.DataFrame(mixed),
                      {f"{name}/{fusion}/{k}": frame for (name, fusion, k), frame in predictions.items()})


def measure(params: Params, layout: Layout, valid: SequenceData, models: dict[str, list[tuple[EMIFusionModel, str]]],
            batch_size: int, show_progress: bool = False) -> Robustness:
    """``robustness`` on a pipeline root: its validation clips (``valid``), read as extract decoded and kept them
    (decoded once otherwise), encoded again by the encoders with ``layout``'s tuned blocks; their text is not encoded
    again (the vectors extract stored)."""
    featurizer = load_featurizer(params.extract, params.data, ("visual", "audio"),
                                 tuned=load_tuned_encoders(layout.alignment_model),
                                 store=DecodedStore(decoded_dir(layout.features), params.extract, params.data,
                                                    keep=frozenset(params.extract.keep_decoded)))
    by_id = {c.id: c for c in list_clips(layout.raw)}
    return robustness(featurizer, params.evaluate.robustness, params.seed, valid, [by_id[i] for i in valid.ids],
                      load_features(layout.features, ("valid",)).text_vectors(), layout.alignment_model, models,
                      batch_size, show_progress)


SUMMED = ("pearson_mean", "delta_pearson", "mse", "weight_V", "weight_A", "weight_T", "weight_damaged",
          "delta_pearson_dropped")
KIND_SUMMED = ("weight_clean", "weight_damaged", "delta_pearson_kind", "delta_pearson_kind_dropped")


def robustness_table(result: Robustness) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sd over the training seeds: the condition x fusion table (``<value>`` and ``<value>_sd``, plus per
    damaged condition, on the model's fusion's rows, ``loss_avoided`` from the mean deltas (None: average fusion's
    loss is none or within its seed noise), the paired model - average
    difference of the deltas over seeds and whether it exceeds ``SIGNIFICANT_SD`` sds) and the mixed condition's
    weights per damage kind."""
    runs = result.runs
    table = mean_sd(runs, ["condition", "fusion"], list(SUMMED))
    counts = runs.groupby(["condition", "fusion"], sort=False)[["n_damaged", "n"]].first().reset_index()
    table = table.merge(counts, on=["condition", "fusion"])
    table["seeds"] = runs.groupby(["condition", "fusion"], sort=False).size().to_numpy()
    table["loss_avoided"], table["fusion_minus_average"] = np.nan, np.nan
    table["fusion_minus_average_sd"], table["exceeds_2sd"] = np.nan, False
    fusion, ref = model_fusion(runs), REFERENCE_FUSION
    for name in CONDITIONS[1:]:
        per = {f: runs[(runs.condition == name) & (runs.fusion == f)].sort_values("seed")["delta_pearson"]
               for f in (fusion, ref)}
        at = (table.condition == name) & (table.fusion == fusion)
        if fusion == ref or any(len(v) == 0 for v in per.values()) or not at.any():
            continue
        sd_average = per[ref].std(ddof=1) if len(per[ref]) > 1 else float("nan")
        avoided = loss_avoided(per[fusion].mean(), per[ref].mean(), sd_average)
        diff, sd, exceeds = paired_difference(per[fusion].to_numpy(), per[ref].to_numpy())
        table.loc[at, ["loss_avoided", "fusion_minus_average", "fusion_minus_average_sd", "exceeds_2sd"]] = [
            np.nan if avoided is None else avoided, diff, sd, exceeds]
    mixed = result.mixed
    keys = ["damage", "modality", "masked", "fusion"]
    per_kind = mean_sd(mixed, keys, list(KIND_SUMMED)) if len(mixed) else mixed
    if len(mixed):
        per_kind.insert(4, "n", mixed.groupby(keys, sort=False)["n"].first().to_numpy())
    return table, per_kind
