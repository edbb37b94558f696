"""The feature store on disk: few files, not one per clip, written atomically so a killed run resumes.

``<features>/{visual,audio,text}/shard-NNNNN.npz`` (arrays only, read with ``allow_pickle=False``; visual and audio
shards also hold the per-step reliability cues, ``emi.features.cues``), each followed by a ``.json`` receipt holding the
fingerprint of exactly what the shard depends on; ``index.csv`` (id -> shard, offset, steps, per-modality status)
and ``manifest.json``. A shard is complete only when its receipt matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import MODALITIES
from emi.data.dataset import SPLITS, split_path
from emi.data.sequences import Ragged, SequenceData, npz_arrays
from emi.utils import atomic_path, fingerprint, link_or_copy, remove_temporaries, sha256_file, write_json

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
        remove_leftovers_of(Path(out_dir) / m, set(keep[m]))


def remove_leftovers_of(folder: Path, keep: set[Path]) -> None:
    remove_temporaries(folder)
    for stale in folder.glob("shard-*"):
        if stale.suffix in (".npz", ".json") and stale.with_suffix(".npz") not in keep:
            stale.unlink()


def publish_shards(work: dict[str, list[Path]], out_dir: Path) -> dict[str, list[Path]]:
    """The finished shards (and receipts) of the work folder, hard-linked (copied across file systems) into
    ``out_dir``, whose other shards are removed; returns their paths there."""
    out: dict[str, list[Path]] = {}
    for m, paths in work.items():
        out[m] = [shard_path(out_dir, m, i) for i in range(len(paths))]
        remove_leftovers_of(Path(out_dir) / m, set(out[m]))
        for src, dst in zip(paths, out[m], strict=True):
            for a, b in ((src, dst), (src.with_suffix(".json"), dst.with_suffix(".json"))):
                link_or_copy(a, b)
    return out


def features_fingerprint(out_dir: Path) -> str:
    """What the feature store holds, from its shard receipts (which fingerprint every input of every shard)."""
    receipts = sorted(Path(out_dir).glob("*/shard-*.json"))
    return fingerprint([(p.parent.name, p.name, json.loads(p.read_text())["fingerprint"]) for p in receipts])


def pack(ids: list[str], feats: list[np.ndarray], status: list[str], detail: list[str],
         cues: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One modality of one shard: per-clip sequences concatenated, with lengths, statuses and details, and the
    per-step reliability cues (``cues``, rows like the sequences' rows) of the visual and audio modalities."""
    lengths = np.array([f.shape[0] for f in feats], np.int64)
    out = {"ids": np.array(ids), "lengths": lengths, "data": _rows(feats), "status": np.array(status),
           "detail": np.array(detail)}
    if cues is not None:
        if [c.shape[0] for c in cues] != lengths.tolist():
            raise ValueError("reliability cues must have one row per feature row of each clip")
        out["cues"] = _rows(cues)
    return out


def _rows(parts: list[np.ndarray]) -> np.ndarray:
    dim = parts[0].shape[1] if parts else 0
    total = sum(p.shape[0] for p in parts)
    return (np.concatenate(parts) if total else np.zeros((0, dim))).astype(np.float32)


@dataclass
class ShardSet:
    """Items (clips, damaged copies) in shards, each modality of each shard one ``.npz`` in ``work`` with a receipt
    holding the fingerprint of what it depends on (``keys[i][modality]``): a shard is done when its receipt matches,
    so a killed or changed run recomputes only unfinished or affected shards. ``emi extract`` and ``emi augment``
    both compute, write and read their features through this."""

    work: Path
    shards: list[list]  # the items of each shard (each with an ``id`` and a ``split``)
    keys: list[dict[str, str]]
    paths: dict[str, list[Path]]
    todo: dict[str, list[int]]  # modality -> shards whose file or receipt is missing or stale

    @classmethod
    def plan(cls, work: Path, shards: list[list], keys: list[dict[str, str]]) -> ShardSet:
        """What is left to compute in ``work``; half-written files and shards beyond ``shards`` are removed."""
        paths = {m: [shard_path(work, m, i) for i in range(len(shards))] for m in MODALITIES}
        todo = {m: [i for i in range(len(shards)) if not shard_done(paths[m][i], keys[i][m])] for m in MODALITIES}
        remove_leftovers(work, paths)
        return cls(Path(work), shards, keys, paths, todo)

    @property
    def shards_to_run(self) -> list[int]:
        return sorted({i for ids in self.todo.values() for i in ids})

    def modalities_todo(self, i: int) -> list[str]:
        return [m for m in MODALITIES if i in self.todo[m]]

    def write(self, i: int, feats, modalities: list[str]) -> None:
        """Shard ``i`` of each of ``modalities`` from ``feats`` (``emi.features.featurize.Features`` of its items, in
        order), each file written atomically, its receipt last."""
        for m in modalities:
            arrays = getattr(feats, m)
            if m == "text":  # one vector per item
                arrays = [row[None] for row in arrays]
            detail = feats.detail if m != "text" else [""] * len(feats.ids)
            save_shard(self.paths[m][i], self.keys[i][m], pack(feats.ids, arrays, feats.status[m], detail,
                                                               feats.cues.get(m)),
                       {"modality": m, "items": len(feats.ids)})

    def incomplete(self) -> list[str]:
        """The shard files whose receipt is missing or stale."""
        return [str(self.paths[m][i]) for m in MODALITIES for i in range(len(self.shards))
                if not shard_done(self.paths[m][i], self.keys[i][m])]

    def index(self, paths: dict[str, list[Path]] | None = None) -> pd.DataFrame:
        """One row per item: where its rows lie in the shards (``paths``, default the work folder's), its steps and
        its status per modality (an item that could not be decoded has status ``error`` and no usable modality)."""
        paths = paths or self.paths
        rows = []
        for i, shard in enumerate(self.shards):
            parts = {m: load_shard(paths[m][i]) for m in MODALITIES}
            starts = {m: np.concatenate([[0], np.cumsum(parts[m]["lengths"])[:-1]]) for m in ("visual", "audio")}
            for j, item in enumerate(shard):
                status = {m: str(parts[m]["status"][j]) for m in MODALITIES}
                error = status["visual"] == "error" or status["audio"] == "error"
                rows.append({
                    "id": item.id, "split": item.split, "shard": i,
                    "offset": int(starts["visual"][j]), "audio_offset": int(starts["audio"][j]),
                    "n_steps": int(parts["visual"]["lengths"][j]), "n_audio_steps": int(parts["audio"]["lengths"][j]),
                    "status": "error" if error else "ok", **{f"{m}_status": status[m] for m in MODALITIES},
                    **{f"has_{m}": not error and status[m] == "ok" for m in MODALITIES},
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
def skipped_clips(out_dir: Path) -> dict[str, str]:
    """Clips extraction could not process (status error): id -> the reason."""
    index = pd.read_csv(Path(out_dir) / INDEX_FILE, dtype={"id": str, "detail": str}, keep_default_na=False)
    bad = index[index["status"] != "ok"]
    return dict(zip(bad["id"], bad["detail"]))


@dataclass
class FeatureSet:
    """Features of a set of clips, ready for the models: per-clip sequences (read from the shards on access) plus
    modality masks (V, A, T)."""

    ids: list[str]
    splits: list[str]
    visual: Ragged
    audio: Ragged
    text: np.ndarray
    mask: np.ndarray  # (N, 3) bool: modality usable
    dims: dict[str, int]
    encoders: list[dict]
    cues: dict[str, Ragged] | None = None  # visual, audio: per-step reliability cues (None: a store without them)

    def text_vectors(self) -> dict[str, np.ndarray | None]:
        """Clip id -> its stored text vector, None where the clip had no usable text (``Featurizer.encode``'s
        ``text_vectors``)."""
        return {clip: self.text[i] if self.mask[i, MODALITIES.index("text")] else None
                for i, clip in enumerate(self.ids)}


def read_sequences(index: pd.DataFrame, root: Path) -> SequenceData:
    """The usable items of ``index`` (status ok) from the shards under ``root``: visual and audio sequences (and
    their cues, when every shard holds them) stay in the files until an item is read; text vectors (one per item)
    are loaded. Labels are None."""
    index = index[index["status"] == "ok"]
    shards = sorted(set(index["shard"].astype(int)))
    slot = {s: k for k, s in enumerate(shards)}
    files = {m: [shard_path(root, m, s) for s in shards] for m in ("visual", "audio")}
    rows = {"visual": [(slot[r.shard], r.offset, r.n_steps) for r in index.itertuples()],
            "audio": [(slot[r.shard], r.audio_offset, r.n_audio_steps) for r in index.itertuples()]}
    visual, audio = (Ragged.from_npz(files[m], "data", rows[m]) for m in ("visual", "audio"))
    cues = ({m: Ragged.from_npz(files[m], "cues", rows[m]) for m in files}
            if all("cues" in npz_arrays(p) for m in files for p in files[m]) else None)
    texts = {s: load_shard(shard_path(root, "text", s)) for s in shards}  # one vector per item: small
    where = {s: {c: j for j, c in enumerate(t["ids"].tolist())} for s, t in texts.items()}
    text = [texts[r.shard]["data"][where[r.shard][r.id]] for r in index.itertuples()]
    return SequenceData(index["id"].tolist(), visual, audio, np.stack(text) if text else np.zeros((0, 0), np.float32),
                        index[[f"has_{m}" for m in MODALITIES]].to_numpy(bool).reshape(-1, len(MODALITIES)), None,
                        cues)


def load_features(out_dir: Path, splits: tuple[str, ...] | None = None) -> FeatureSet:
    """Features of every clip that was processed (status ok), optionally only some splits (``read_sequences``)."""
    out_dir = Path(out_dir)
    index = pd.read_csv(out_dir / INDEX_FILE, dtype={"id": str})
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    index = index[index["status"] == "ok"]
    if splits is not None:
        index = index[index["split"].isin(splits)]
    data = read_sequences(index, out_dir)
    dims = manifest["dims"]
    text = data.text if len(data) else np.zeros((0, dims["text"]), np.float32)
    return FeatureSet(ids=data.ids, splits=index["split"].tolist(), visual=data.visual, audio=data.audio, text=text,
                      mask=data.mask, dims=dims, encoders=manifest["encoders"], cues=data.cues)
