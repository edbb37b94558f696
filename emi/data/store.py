"""The feature store on disk: few files, not one per clip, written atomically so a killed run resumes.

``<features>/{visual,audio,text}/shard-NNNNN.npz`` (arrays only, read with ``allow_pickle=False``; visual and audio
shards also hold the per-step reliability cues, ``emi.cues``), each followed by a ``.json`` receipt holding the
fingerprint of exactly what the shard depends on; ``index.csv`` (id -> shard, offset, steps, per-modality status)
and ``manifest.json``. A shard is complete only when its receipt matches.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import MODALITIES
from emi.data.dataset import SPLITS, Clip, split_path
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
def skipped_clips(out_dir: Path) -> dict[str, str]:
    """Clips extraction could not process (status error): id -> the reason."""
    index = pd.read_csv(Path(out_dir) / INDEX_FILE, dtype={"id": str, "detail": str}, keep_default_na=False)
    bad = index[index["status"] != "ok"]
    return dict(zip(bad["id"], bad["detail"]))


def npz_arrays(path: Path) -> dict[str, tuple[int, np.dtype, tuple[int, ...], bool]]:
    """Where each array of an uncompressed ``.npz`` (``np.savez``) lies in the file: the byte offset of its data,
    its dtype, shape and whether it is in Fortran order; so that one clip's rows can be read without loading it."""
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {info.filename} is compressed; arrays are read in place from np.savez files")
            fh.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
            name_len, extra_len = struct.unpack("<HH", fh.read(4))
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            out[info.filename.removesuffix(".npy")] = (fh.tell(), dtype, shape, fortran)
    return out


class Ragged(Sequence):
    """Per-clip ``(steps, dim)`` arrays that stay on disk: item ``i`` is read from its file when asked for, so a
    training run over 12,660 clips holds one batch of features, not the dataset. ``take`` selects clips (a view)."""

    def __init__(self, sources: list[tuple[Path, int, np.dtype, int]], rows: list[tuple[int, int, int]]):
        self.sources = sources  # (file, byte offset of the (total steps, dim) array, dtype, dim)
        self.rows = rows  # per clip: (source, first row, steps)

    @classmethod
    def from_npz(cls, files: list[Path], name: str, rows: list[tuple[int, int, int]]) -> Ragged:
        sources = []
        for path in files:
            offset, dtype, shape, fortran = npz_arrays(path)[name]
            if fortran or len(shape) != 2:
                raise ValueError(f"{path}: {name} is not a C-order (steps, dim) array")
            sources.append((Path(path), offset, dtype, int(shape[1])))
        return cls(sources, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        source, start, n = self.rows[i]
        path, offset, dtype, dim = self.sources[source]
        with open(path, "rb") as fh:
            fh.seek(offset + start * dim * dtype.itemsize)
            return np.fromfile(fh, dtype=dtype, count=n * dim).reshape(n, dim)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Ragged:
        return Ragged(self.sources, [self.rows[i] for i in idx])

    def lengths(self) -> list[int]:
        return [n for _, _, n in self.rows]


class Joined(Sequence):
    """Per-clip arrays of several ragged sequences side by side along features (Stage II's ``both`` inputs)."""

    def __init__(self, parts: list[Sequence[np.ndarray]]):
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return np.concatenate([p[i] for p in self.parts], axis=-1)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Joined:
        return Joined([take(p, idx) for p in self.parts])


class Chained(Sequence):
    """Per-clip sequences one after the other (the training split, then damaged copies of its clips)."""

    def __init__(self, parts: list[Sequence[np.ndarray]]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - int(self.starts[k])]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Picked:
        return Picked(self, list(idx))


class Picked(Sequence):
    """Clips ``idx`` of a per-clip sequence, read from it when asked for."""

    def __init__(self, base: Sequence[np.ndarray], idx: list[int]):
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.base[self.idx[i]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, idx: Sequence[int]) -> Picked:
        return Picked(self.base, [self.idx[i] for i in idx])


def take(seq: Sequence[np.ndarray], idx: Sequence[int]) -> Sequence[np.ndarray]:
    """Clips ``idx`` of a per-clip sequence: a view for on-disk sequences, a list otherwise."""
    return seq.take(idx) if isinstance(seq, Ragged | Joined | Chained | Picked) else [seq[i] for i in idx]


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


def load_features(out_dir: Path, splits: tuple[str, ...] | None = None) -> FeatureSet:
    """Features of every clip that was processed (status ok), optionally only some splits. Visual and audio
    sequences stay in the shard files until a clip is read; text (one vector per clip) is loaded."""
    out_dir = Path(out_dir)
    index = pd.read_csv(out_dir / INDEX_FILE, dtype={"id": str})
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    index = index[index["status"] == "ok"]
    if splits is not None:
        index = index[index["split"].isin(splits)]
    shards = sorted(set(index["shard"].astype(int)))
    slot = {s: k for k, s in enumerate(shards)}
    files = {m: [shard_path(out_dir, m, s) for s in shards] for m in ("visual", "audio")}
    rows = {"visual": [(slot[r.shard], r.offset, r.n_steps) for r in index.itertuples()],
            "audio": [(slot[r.shard], r.audio_offset, r.n_audio_steps) for r in index.itertuples()]}
    visual, audio = (Ragged.from_npz(files[m], "data", rows[m]) for m in ("visual", "audio"))
    cues = ({m: Ragged.from_npz(files[m], "cues", rows[m]) for m in files}
            if all("cues" in npz_arrays(p) for m in files for p in files[m]) else None)
    parts: dict[int, tuple[dict[str, int], np.ndarray]] = {}

    def text_of(shard: int, clip: str) -> np.ndarray:
        if shard not in parts:  # one vector per clip: small enough to hold
            part = load_shard(shard_path(out_dir, "text", shard))
            parts[shard] = ({c: j for j, c in enumerate(part["ids"].tolist())}, part["data"])
        rows, data = parts[shard]
        return data[rows[clip]]

    text = [text_of(r.shard, r.id) for r in index.itertuples()]
    dims = manifest["dims"]
    return FeatureSet(
        ids=index["id"].tolist(), splits=index["split"].tolist(), visual=visual, audio=audio,
        text=np.stack(text) if text else np.zeros((0, dims["text"]), np.float32),
        mask=index[["has_visual", "has_audio", "has_text"]].to_numpy(bool), dims=dims,
        encoders=manifest["encoders"], cues=cues,
    )
