"""Corruption-aware training data for Stage II: damaged copies of training clips.

A seeded share (``stage2.augment.fraction``) of the training clips gets one copy each, with one damage drawn from
``stage2.augment.kinds``: an occluded face, audio noise at an SNR drawn from ``noise_snr_db``, missing audio, or a
missing transcript (a silent track is treated as missing audio by the pipeline, so "muted" is that kind). Copies
are decoded and encoded by the one featurize path (``emi.featurize.Featurizer``: the same encoders, fine-tuned
blocks included, as the clean features), in shards with receipts under the work folder, then projected by the
frozen Stage-I model into ``augmented.npz`` in the layout of ``aligned.npz``. Stage II adds them to its training
split (labels of the source clip); validation and test clips are never copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import MODALITIES, AugmentParams, Params
from emi.cues import CUE_VERSION, CUES
from emi.data.dataset import Clip
from emi.data.store import Ragged, load_shard, pack, remove_leftovers, save_shard, shard_done, shard_path
from emi.featurize import OK, Damage, Featurizer
from emi.paths import COPY_SEPARATOR
from emi.train.loop import SequenceData
from emi.utils import fingerprint, sha256_file

log = logging.getLogger(__name__)

# the augmentation's own random streams under params.seed (choice of clips and damages; per-copy noise)
PLAN_STREAM, NOISE_STREAM = 1, 2


class AugmentError(RuntimeError):
    """More copies failed than data.max_error_fraction allows, or a shard is not complete (the message says)."""


@dataclass(frozen=True)
class DamagedCopy:
    id: str
    source: str
    kind: str
    snr_db: float | None  # noisy_audio only
    index: int  # position in the plan: the copy's own noise stream

    def damage(self, a: AugmentParams) -> Damage:
        return {"occluded_face": Damage(occlusion_box=tuple(a.occlusion_box)),
                "noisy_audio": Damage(noise_snr_db=self.snr_db),
                "missing_audio": Damage(drop_audio=True),
                "missing_text": Damage(drop_text=True)}[self.kind]

    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(NOISE_STREAM, self.index)))


def plan_copies(train_ids: list[str], a: AugmentParams, seed: int) -> list[DamagedCopy]:
    """Which training clips get a copy and which damage each gets: round(fraction * n) clips, drawn by the seed;
    the same ids, params and seed give the same plan."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(PLAN_STREAM,)))
    k = round(a.fraction * len(train_ids))
    rows = np.sort(rng.choice(len(train_ids), size=k, replace=False)) if k else np.zeros(0, int)
    kinds = rng.integers(len(a.kinds), size=k)
    snrs = rng.uniform(a.noise_snr_db[0], a.noise_snr_db[1], size=k)
    out = []
    for n, (row, j, snr) in enumerate(zip(rows, kinds, snrs)):
        kind = a.kinds[j]
        out.append(DamagedCopy(f"{train_ids[row]}{COPY_SEPARATOR}{kind}", train_ids[row], kind,
                               round(float(snr), 3) if kind == "noisy_audio" else None, n))
    return out


def copies_table(copies: list[DamagedCopy], problems: dict[str, str] | None = None) -> pd.DataFrame:
    problems = problems or {}
    return pd.DataFrame({"id": [c.id for c in copies], "source": [c.source for c in copies],
                         "kind": [c.kind for c in copies], "snr_db": [c.snr_db for c in copies],
                         "status": ["error" if c.id in problems else OK for c in copies],
                         "detail": [problems.get(c.id, "") for c in copies]})


@dataclass
class AugmentPlan:
    copies: list[DamagedCopy]
    shards: list[list[DamagedCopy]]
    keys: list[str]
    paths: dict[str, list[Path]]
    todo: list[int]


def plan_shards(params: Params, copies: list[DamagedCopy], clips: dict[str, Clip], texts: dict[str, str | None],
                work: Path, alignment_path: Path) -> AugmentPlan:
    """Shards of ``extract.shard_size`` copies; a shard's receipt fingerprints what its features depend on (the
    extract and data settings, the Stage-I model whose fine-tuned blocks encode them, the copies, their clips'
    bytes and transcripts), so a rerun recomputes only unfinished or affected shards."""
    size = params.extract.shard_size
    shards = [copies[i:i + size] for i in range(0, len(copies), size)]
    common = {"extract": params.extract.model_dump(mode="json"), "data": params.data.model_dump(mode="json"),
              "occlusion_box": list(params.stage2.augment.occlusion_box), "seed": params.seed,
              "alignment": sha256_file(alignment_path), "cues": CUE_VERSION}
    keys = [fingerprint({**common, "copies": [(c.id, c.kind, c.snr_db, c.index, sha256_file(clips[c.source].path),
                                               texts.get(c.source)) for c in shard]}) for shard in shards]
    paths = {m: [shard_path(work, m, i) for i in range(len(shards))] for m in MODALITIES}
    todo = [i for i in range(len(shards)) if not all(shard_done(paths[m][i], keys[i]) for m in MODALITIES)]
    remove_leftovers(work, paths)
    return AugmentPlan(copies, shards, keys, paths, todo)


def run_shard(plan: AugmentPlan, i: int, featurizer: Featurizer, clips: dict[str, Clip],
              texts: dict[str, str | None], a: AugmentParams, seed: int) -> None:
    """Decode each copy's source clip, damage it and encode every modality; a clip that cannot be decoded is kept
    as an ``error`` row (reported by the stage). Each modality's shard is written atomically, its receipt last."""
    shard = plan.shards[i]
    decoded = featurizer.decode([clips[c.source] for c in shard], MODALITIES)
    rows: dict[str, list] = {m: [] for m in MODALITIES}
    cues: dict[str, list] = {m: [] for m in CUES}
    status: dict[str, list[str]] = {m: [] for m in MODALITIES}
    detail: list[str] = []
    dims = {m: getattr(featurizer.cfg, m).dim for m in MODALITIES}
    for copy, d in zip(shard, decoded):
        if d.visual_status == "error":
            for m in MODALITIES:
                rows[m].append(np.zeros((0 if m != "text" else 1, dims[m]), np.float32))
                status[m].append("error")
            for m, names in CUES.items():
                cues[m].append(np.zeros((0, len(names)), np.float32))
            detail.append(d.detail)
            continue
        f = featurizer.encode([d], texts, MODALITIES, copy.damage(a), copy.rng(seed))
        rows["visual"].append(f.visual[0])
        rows["audio"].append(f.audio[0])
        rows["text"].append(f.text[:1])
        for m in CUES:
            cues[m].append(f.cues[m][0])
        for m in MODALITIES:
            status[m].append(f.status[m][0])
        detail.append(f.detail[0])
    ids = [c.id for c in shard]
    for m in MODALITIES:
        save_shard(plan.paths[m][i], plan.keys[i], pack(ids, rows[m], status[m], detail, cues.get(m)),
                   {"modality": m, "copies": len(ids)})


def assemble(plan: AugmentPlan) -> tuple[SequenceData, dict[str, str]]:
    """Every finished copy's encoder features, read from the shards on access (memory holds the masks and text
    vectors), and the copies that could not be made (id -> reason)."""
    missing = [str(plan.paths["visual"][i]) for i in range(len(plan.shards))
               if not all(shard_done(plan.paths[m][i], plan.keys[i]) for m in MODALITIES)]
    if missing:
        raise AugmentError(f"{len(missing)} augmentation shard(s) are not complete: {', '.join(missing[:5])}")
    ids: list[str] = []
    seq_rows: dict[str, list[tuple[int, int, int]]] = {"visual": [], "audio": []}
    texts, masks = [], []
    problems: dict[str, str] = {}
    for s in range(len(plan.shards)):
        text = load_shard(plan.paths["text"][s])  # one vector per copy: small enough to hold
        meta = {m: _meta(plan.paths[m][s]) for m in ("visual", "audio")}
        statuses = {"visual": meta["visual"]["status"], "audio": meta["audio"]["status"], "text": text["status"]}
        starts = {m: np.concatenate([[0], np.cumsum(meta[m]["lengths"])[:-1]]) for m in ("visual", "audio")}
        for j, clip in enumerate(meta["visual"]["ids"].tolist()):
            if statuses["visual"][j] == "error":
                problems[clip] = str(meta["visual"]["detail"][j])
                continue
            ids.append(clip)
            for m in ("visual", "audio"):
                seq_rows[m].append((s, int(starts[m][j]), int(meta[m]["lengths"][j])))
            texts.append(text["data"][j])
            masks.append([statuses[m][j] == OK for m in MODALITIES])
    visual, audio = (Ragged.from_npz(plan.paths[m], "data", seq_rows[m]) for m in ("visual", "audio"))
    cues = {m: Ragged.from_npz(plan.paths[m], "cues", seq_rows[m]) for m in CUES}
    text = np.stack(texts).astype(np.float32) if texts else np.zeros((0, 0), np.float32)
    return SequenceData(ids, visual, audio, text, np.array(masks, bool).reshape(-1, 3), None, cues), problems


def _meta(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("ids", "lengths", "status", "detail")}


def run_all(plan: AugmentPlan, make_featurizer: Callable[[], Featurizer], clips: dict[str, Clip],
            texts: dict[str, str | None], a: AugmentParams, seed: int, advance: Callable[[int], None]) -> int:
    """The unfinished shards, in order; the featurizer (encoders) is loaded only when one is left."""
    if not plan.todo:
        return 0
    featurizer = make_featurizer()
    for i in plan.todo:
        run_shard(plan, i, featurizer, clips, texts, a, seed)
        advance(len(plan.shards[i]))
    return len(plan.todo)
