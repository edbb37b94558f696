"""Corruption-aware training data for Stage II: damaged copies of training clips.

A seeded share (``stage2.augment.fraction``) of the training clips gets one copy each, with one damage drawn from
``stage2.augment.kinds``: an occluded face, audio noise at an SNR drawn from ``noise_snr_db``, missing audio, or a
missing transcript (a silent track is treated as missing audio by the pipeline, so "muted" is that kind). Copies
are decoded and encoded by the one featurize path (``emi.features.featurize.Featurizer``: the same encoders, fine-tuned
blocks included, as the clean features), in shards with receipts under the work folder, then projected by the
frozen Stage-I model into ``augmented.npz`` in the layout of ``aligned.npz``. Stage II adds them to its training
split (labels of the source clip); validation and test clips are never copied.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import MODALITIES, AugmentParams, Params
from emi.data.dataset import Clip
from emi.data.sequences import SequenceData
from emi.encoders.registry import feature_revision
from emi.features.cues import CUE_VERSION
from emi.features.damage import Damage, damage_of
from emi.features.decode import DECODE_VERSION, OK
from emi.features.featurize import Features, Featurizer
from emi.features.store import ShardSet, read_sequences
from emi.paths import COPY_SEPARATOR
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
    split: str = "train"  # only training clips are copied

    def damage(self, a: AugmentParams) -> Damage:
        return damage_of(self.kind, a.occlusion_box, self.snr_db)

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


def plan_shards(params: Params, copies: list[DamagedCopy], clips: dict[str, Clip],
                text_vectors: dict[str, np.ndarray | None], work: Path, alignment_path: Path) -> ShardSet:
    """Shards of ``extract.shard_size`` copies (``emi.features.store.ShardSet``); a shard's receipt fingerprints
    what its features depend on (the extract and data settings, the visual and audio encoders' code revisions, the
    Stage-I model whose fine-tuned blocks encode them, the copies, their clips' bytes and stored text vectors), so a
    rerun recomputes only unfinished or affected shards."""
    size = params.extract.shard_size
    shards = [copies[i:i + size] for i in range(0, len(copies), size)]
    common = {"extract": params.extract.model_dump(mode="json"), "data": params.data.model_dump(mode="json"),
              "occlusion_box": list(params.stage2.augment.occlusion_box), "seed": params.seed,
              "alignment": sha256_file(alignment_path), "cues": CUE_VERSION, "decode": DECODE_VERSION,
              # as extract's receipts: a code change that alters an encoder's features bumps its revision
              "revisions": {m: feature_revision(m, getattr(params.extract, m).kind) for m in ("visual", "audio")}}
    keys = [fingerprint({**common, "copies": [(c.id, c.kind, c.snr_db, c.index, sha256_file(clips[c.source].path),
                                               _vector_key(text_vectors.get(c.source))) for c in shard]})
            for shard in shards]
    return ShardSet.plan(work, shards, [dict.fromkeys(MODALITIES, key) for key in keys])


def _vector_key(vector: np.ndarray | None) -> str | None:
    return None if vector is None else hashlib.sha256(np.ascontiguousarray(vector, np.float32).tobytes()).hexdigest()


def featurize_copies(shard: list[DamagedCopy], featurizer: Featurizer, clips: dict[str, Clip],
                     text_vectors: dict[str, np.ndarray | None], a: AugmentParams, seed: int) -> Features:
    """Each copy's source clip decoded, damaged (its own damage and noise stream) and encoded, its text the vector
    extract stored for the source clip (``text_vectors``) unless the damage drops it; a clip that cannot be decoded
    gives an ``error`` row (the stage reports it)."""
    decoded = featurizer.decode([clips[c.source] for c in shard], MODALITIES)
    parts = [featurizer.encode([d], {}, MODALITIES, copy.damage(a), copy.rng(seed), text_vectors)
             for copy, d in zip(shard, decoded)]
    return Features.concat(parts, [c.id for c in shard])


def assemble(shards: ShardSet) -> tuple[SequenceData, dict[str, str]]:
    """Every finished copy's encoder features, read from the shards on access (memory holds the masks and text
    vectors), and the copies that could not be made (id -> reason)."""
    missing = shards.incomplete()
    if missing:
        raise AugmentError(f"{len(missing)} augmentation shard(s) are not complete: {', '.join(missing[:5])}")
    index = shards.index()
    if not len(index):
        return SequenceData([], [], [], np.zeros((0, 0), np.float32), np.zeros((0, 3), bool), None), {}
    bad = index[index["status"] != "ok"]
    return read_sequences(index, shards.work), dict(zip(bad["id"], bad["detail"]))


def run_all(shards: ShardSet, make_featurizer: Callable[[], Featurizer], clips: dict[str, Clip],
            text_vectors: dict[str, np.ndarray | None], a: AugmentParams, seed: int,
            advance: Callable[[int], None]) -> int:
    """The unfinished shards, in order; the featurizer (encoders) is loaded only when one is left."""
    if not shards.shards_to_run:
        return 0
    featurizer = make_featurizer()
    for i in shards.shards_to_run:
        shards.write(i, featurize_copies(shards.shards[i], featurizer, clips, text_vectors, a, seed),
                     list(MODALITIES))
        advance(len(shards.shards[i]))
    return len(shards.shards_to_run)
