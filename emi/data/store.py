"""The feature store on disk: few files, not one per clip, written atomically so a killed run resumes.

``<features>/{visual,audio,text}/shard-NNNNN.npz`` (arrays only, read with ``allow_pickle=False``), each followed
by a ``.json`` receipt holding the fingerprint of exactly what the shard depends on; ``index.csv`` (id -> shard,
offset, steps, per-modality status) and ``manifest.json``. A shard is complete only when its receipt matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import MODALITIES
from emi.data.dataset import SPLITS, Clip, split_path
from emi.utils import atomic_path, fingerprint, sha256_file, write_json

INDEX_FILE = "index.csv"
MANIFEST_FILE = "manifest.json"


def shard_path(out_dir: Path, modality: str, i: int) -> Path:
    return Path(out_dir) / modality / f"shard-{i:05d}.npz"


def save_shard(path: Path, key: str, arrays: dict[str, np.ndarray], info: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json(path.with_suffix(".json"), {"fingerprint": key, **info})  # the receipt: written last


def shard_done(path: Path, key: str) -> bool:
    receipt = path.with_suffix(".json")
    if not (path.is_file() and receipt.is_file()):
        return False
    try:
        return json.loads(receipt.read_text())["fingerprint"] == key
    except (ValueError, KeyError):
        return False


def load_shard(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def remove_leftovers(out_dir: Path, keep: dict[str, list[Path]]) -> None:
    """Half-written files of a killed run, and shards of a previous, larger dataset."""
    for m in MODALITIES:
        for leftover in (Path(out_dir) / m).glob(".shard-*.tmp*"):
            leftover.unlink()
        for stale in (Path(out_dir) / m).glob("shard-*"):
            if stale.suffix in (".npz", ".json") and stale.with_suffix(".npz") not in keep[m]:
                stale.unlink()


def features_fingerprint(out_dir: Path) -> str:
    """What the feature store holds, from its shard receipts (which fingerprint every input of every shard)."""
    receipts = sorted(Path(out_dir).glob("*/shard-*.json"))
    return fingerprint([(p.parent.name, p.name, json.loads(p.read_text())["fingerprint"]) for p in receipts])


def pack(ids: list[str], feats: list[np.ndarray], status: list[str], detail: list[str]) -> dict[str, np.ndarray]:
    """One modality of one shard: per-clip sequences concatenated, with lengths, statuses and details."""
    lengths = np.array([f.shape[0] for f in feats], np.int64)
    dim = feats[0].shape[1] if feats else 0
    data = np.concatenate(feats) if lengths.sum() else np.zeros((0, dim), np.float32)
    return {"ids": np.array(ids), "lengths": lengths, "data": data.astype(np.float32), "status": np.array(status),
            "detail": np.array(detail)}


def build_index(shards: list[list[Clip]], paths: dict[str, list[Path]]) -> pd.DataFrame:
    rows = []
    for i, shard in enumerate(shards):
        parts = {m: load_shard(paths[m][i]) for m in MODALITIES}
        offsets = np.concatenate([[0], np.cumsum(parts["visual"]["lengths"])[:-1]])
        a_offsets = np.concatenate([[0], np.cumsum(parts["audio"]["lengths"])[:-1]])
        for j, clip in enumerate(shard):
            v_status, a_status = str(parts["visual"]["status"][j]), str(parts["audio"]["status"][j])
            t_status = str(parts["text"]["status"][j])
            error = v_status == "error" or a_status == "error"
            rows.append({
                "id": clip.id, "split": clip.split, "shard": i,
                "offset": int(offsets[j]), "audio_offset": int(a_offsets[j]),
                "n_steps": int(parts["visual"]["lengths"][j]),
                "n_audio_steps": int(parts["audio"]["lengths"][j]),
                "status": "error" if error else "ok",
                "visual_status": v_status, "audio_status": a_status, "text_status": t_status,
                "has_visual": not error and v_status == "ok",
                "has_audio": not error and a_status == "ok",
                "has_text": not error and t_status == "ok",
                "detail": str(parts["visual"]["detail"][j] or parts["audio"]["detail"][j]),
            })
    return pd.DataFrame(rows)


def data_fingerprint(raw_dir: Path, features_dir: Path) -> tuple[str, dict[str, str]]:
    """What a model was trained on: the split files (labels) and the feature index (which fingerprints every shard)."""
    files = {f"{s}_split.csv": split_path(raw_dir, s) for s in SPLITS}
    files["features/index.csv"] = Path(features_dir) / INDEX_FILE
    hashes = {name: sha256_file(p) for name, p in files.items() if p.is_file()}
    return fingerprint(hashes), hashes


# ----------------------------------------------------------------------------- reading features back
@dataclass
class FeatureSet:
    """Features of a set of clips, ready for the models: per-clip sequences plus modality masks (V, A, T)."""

    ids: list[str]
    splits: list[str]
    visual: list[np.ndarray]
    audio: list[np.ndarray]
    text: np.ndarray
    mask: np.ndarray  # (N, 3) bool: modality usable
    dims: dict[str, int]
    encoders: list[dict]


def load_features(out_dir: Path, splits: tuple[str, ...] | None = None) -> FeatureSet:
    """Features of every clip that was processed (status ok), optionally only some splits."""
    out_dir = Path(out_dir)
    index = pd.read_csv(out_dir / INDEX_FILE, dtype={"id": str})
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    index = index[index["status"] == "ok"]
    if splits is not None:
        index = index[index["split"].isin(splits)]
    cache: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def shard(m: str, i: int) -> dict[str, np.ndarray]:
        if (m, i) not in cache:
            cache[(m, i)] = load_shard(shard_path(out_dir, m, i))
        return cache[(m, i)]

    visual, audio, text = [], [], []
    for row in index.itertuples():
        v, a, t = shard("visual", row.shard), shard("audio", row.shard), shard("text", row.shard)
        visual.append(v["data"][row.offset:row.offset + row.n_steps])
        audio.append(a["data"][row.audio_offset:row.audio_offset + row.n_audio_steps])
        text.append(t["data"][list(t["ids"]).index(row.id)])
    dims = manifest["dims"]
    return FeatureSet(
        ids=index["id"].tolist(), splits=index["split"].tolist(), visual=visual, audio=audio,
        text=np.stack(text) if text else np.zeros((0, dims["text"]), np.float32),
        mask=index[["has_visual", "has_audio", "has_text"]].to_numpy(bool), dims=dims,
        encoders=manifest["encoders"],
    )
