"""Extraction in shards: which shards of the dataset's clips are left to compute (fingerprinted by exactly what
their features depend on), and computing one of them in any process (the extract stage, a Dask worker)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emi.config import Params
from emi.data.dataset import Clip, face_image_dir, list_clips, transcript_texts
from emi.data.media import image_sequence
from emi.encoders.registry import encoder_key, load_featurizer
from emi.features.cues import CUE_VERSION
from emi.features.decode import DECODE_VERSION
from emi.features.decoded import DecodedStore
from emi.features.featurize import Featurizer
from emi.features.store import ShardSet
from emi.paths import decoded_dir, work_dir
from emi.utils import fingerprint, sha256_file


@dataclass
class ExtractPlan:
    """What this run must compute (``shards``: the clips' shards in the work folder, ``emi.features.store``);
    ``finish_extract`` links them into ``out_dir``."""

    params: Params
    raw_dir: Path
    out_dir: Path
    clips: list[Clip]
    shards: ShardSet
    texts: dict[str, str | None]
    hashes: dict[str, str]

    def decoded_store(self) -> DecodedStore | None:
        """Where the clips this run decodes in the splits ``extract.keep_decoded`` names are kept, with the hashes
        taken here (None when it names none)."""
        cfg = self.params.extract
        if not cfg.keep_decoded:
            return None
        return DecodedStore(decoded_dir(self.out_dir), cfg, self.params.data, dict(self.hashes),
                            frozenset(cfg.keep_decoded))

    @property
    def shards_to_run(self) -> list[int]:
        return self.shards.shards_to_run


def shard_keys(params: Params, shard: list[Clip], hashes: dict[str, str], texts: dict[str, str | None]) -> dict:
    """Per modality, the fingerprint of exactly what the shard's features depend on."""
    cfg = params.extract
    common = {"fps": cfg.fps, "frame_max_side": cfg.frame_max_side, "max_steps": cfg.max_steps,
              "decode": DECODE_VERSION}
    ids = [(c.id, hashes[c.id]) for c in shard]
    images = ({"face_images": [(c.id, [(p.name, p.stat().st_size) for p in image_sequence(face_image_dir(c))])
                               for c in shard]} if cfg.visual_source == "face_images" else {})
    return {
        "visual": fingerprint({**encoder_key(cfg, "visual"), "face_crop": cfg.face_crop,
                               "face_margin": cfg.face_margin if cfg.face_crop else None, **common, "clips": ids,
                               **images, "cues": CUE_VERSION}),
        "audio": fingerprint({**encoder_key(cfg, "audio"), "silence_dbfs": params.data.silence_dbfs, **common,
                              "clips": ids, "cues": CUE_VERSION}),
        "text": fingerprint({**encoder_key(cfg, "text"), "per_clip": True, "threads": 1,
                             "clips": [(c.id, texts.get(c.id)) for c in shard]}),
    }


def plan_extract(params: Params, raw_dir: Path, transcripts: Path, out_dir: Path) -> ExtractPlan:
    size = params.extract.shard_size
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clips = list_clips(raw_dir)
    texts = transcript_texts(transcripts)
    shards = [clips[i:i + size] for i in range(0, len(clips), size)]
    hashes = {c.id: (sha256_file(c.path) if c.path.is_file() else "missing") for c in clips}
    keys = [shard_keys(params, shard, hashes, texts) for shard in shards]
    return ExtractPlan(params, raw_dir, out_dir, clips, ShardSet.plan(work_dir(out_dir), shards, keys), texts,
                       hashes)


_FEATURIZERS: dict[str, Featurizer] = {}


def cached_featurizer(params: Params) -> Featurizer:
    """Encoders loaded once per process (a Dask worker runs many shards)."""
    cfg = params.extract
    key = cfg.model_dump_json() + params.data.model_dump_json()
    if key not in _FEATURIZERS:
        _FEATURIZERS.clear()
        _FEATURIZERS[key] = load_featurizer(cfg, params.data)
    return _FEATURIZERS[key]


def run_shard(plan: ExtractPlan, i: int, featurizer: Featurizer | None = None) -> int:
    """Compute the missing modalities of shard ``i``; returns the number of frames encoded. Safe to run in
    any process: the only output is the shard's own files, each written atomically, receipt last."""
    featurizer = featurizer or cached_featurizer(plan.params)
    featurizer.store = plan.decoded_store()  # the clips decoded here are kept for Stage I and evaluate
    todo = plan.shards.modalities_todo(i)
    feats = featurizer(plan.shards.shards[i], plan.texts, todo)
    plan.shards.write(i, feats, todo)
    return sum(len(f) for f in feats.visual) if feats.visual is not None else 0
