"""The dataset layer: the Hume-Vidmimic2 folder layout, its split files and labels, and the transcript table.

One set of parsing rules for every reader: UTF-8, comma-delimited, every cell read as text, surrounding white
space stripped (header and cells), then numbers parsed where a number is expected. Every stage lists clips with
``list_clips`` and reads labels with ``read_labels``; nothing else opens a split file.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
CLIP_DIR = "raw"  # <dataset>/raw/<id>.mp4
CLIP_SUFFIX = ".mp4"
FACE_IMAGES_DIR = "face_images"  # <dataset>/face_images/<id>/<k>.jpg: the organisers' face crops
GENERATOR_DIR = "_generator"  # the embedded dataset's ground truth: what the generator rendered
LATENTS_FILE = "latents.csv"
TRANSCRIPT_COLUMNS = ["id", "split", "text", "language", "avg_logprob", "no_speech_prob", "compression_ratio",
                      "duration_s", "status", "detail"]


class DatasetError(RuntimeError):
    """A dataset folder or table that cannot be read as the layout says; the message names the file."""


@dataclass(frozen=True)
class Clip:
    id: str
    split: str
    path: Path


def split_path(raw_dir: Path, split: str) -> Path:
    return Path(raw_dir) / f"{split}_split.csv"


def clip_path(raw_dir: Path, clip_id: str) -> Path:
    return Path(raw_dir) / CLIP_DIR / f"{clip_id}{CLIP_SUFFIX}"


class ClipIds:
    """Matches split-file ids to the clip files in ``raw/``, as Hume-Vidmimic2 readers do.

    An id names the file with that stem; failing that, a number matches the one file whose stem is the same
    number zero-padded (``12`` -> ``raw/00012.mp4``; some copies of the split files hold unpadded ids). A trailing
    ``.mp4`` in the cell is ignored. A clip's id everywhere downstream (features, predictions, the submission's
    ``Filename``) is its file stem."""

    def __init__(self, raw_dir: Path):
        self.stems = clip_stems(raw_dir)
        self._exact = set(self.stems)
        self._by_number: dict[int, list[str]] = defaultdict(list)
        for stem in self.stems:
            if stem.isdigit():
                self._by_number[int(stem)].append(stem)

    def resolve(self, listed: str) -> tuple[str, str | None]:
        """(clip id, problem): the matching file's stem, else the id as listed and, when several files match,
        why it is ambiguous (a missing file is reported where files are checked)."""
        clip_id = listed[:-len(CLIP_SUFFIX)] if listed.endswith(CLIP_SUFFIX) else listed
        if clip_id in self._exact or not clip_id.isdigit():
            return clip_id, None
        matches = self._by_number.get(int(clip_id), [])
        if len(matches) == 1:
            return matches[0], None
        if len(matches) > 1:
            return clip_id, (f"id {listed} is ambiguous: it matches " +
                             ", ".join(f"{CLIP_DIR}/{m}{CLIP_SUFFIX}" for m in sorted(matches)))
        return clip_id, None


def clip_stems(raw_dir: Path) -> list[str]:
    """Stems of the clip files in ``raw/`` (sorted by id)."""
    folder = Path(raw_dir) / CLIP_DIR
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        stems = [e.name[:-len(CLIP_SUFFIX)] for e in entries
                 if e.name.endswith(CLIP_SUFFIX) and not e.name.startswith(".") and e.is_file()]
    return sorted(stems, key=_id_key)


def misnamed_clips(raw_dir: Path, clip_ids: list[str]) -> dict[str, str]:
    """For ids without a ``raw/<id>.mp4``: the file in ``raw/`` that a case-insensitive file system would have
    matched (``00012.MP4``, as some cameras and Windows tools name them), which this layout does not read."""
    folder = Path(raw_dir) / CLIP_DIR
    if not clip_ids or not folder.is_dir():
        return {}
    with os.scandir(folder) as entries:
        by_lower = {e.name.lower(): e.name for e in entries if e.is_file()}
    wanted = {i: f"{i}{CLIP_SUFFIX}" for i in clip_ids}
    return {i: by_lower[name.lower()] for i, name in wanted.items()
            if name.lower() in by_lower and by_lower[name.lower()] != name}


def face_image_dir(clip: Clip) -> Path:
    """``<dataset>/face_images/<id>/``: the organisers' face crops of a clip in ``raw/``."""
    return clip.path.parent.parent / FACE_IMAGES_DIR / clip.id


def read_split(path: Path) -> pd.DataFrame:
    """A split CSV as text cells, header and cells stripped; ``DatasetError`` names the file if it is unreadable."""
    path = Path(path)
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path.name}: not a readable CSV: {str(exc).strip()}") from None
    frame.columns = [c.strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip()) if len(frame.columns) else frame


def split_ids(raw_dir: Path) -> dict[str, list[str]]:
    """Each present split's clip ids in CSV order (empty cells left out), matched to files by ``ClipIds``."""
    out: dict[str, list[str]] = {}
    ids = ClipIds(raw_dir)
    for split in SPLITS:
        path = split_path(raw_dir, split)
        if not path.is_file():
            continue
        frame = read_split(path)
        if "Filename" not in frame.columns:
            raise DatasetError(f"{path}: no Filename column (header {list(frame.columns)})")
        out[split] = [ids.resolve(f)[0] for f in frame["Filename"] if f]
    if not out:
        raise DatasetError(f"{raw_dir}: no train/valid/test split CSV; run the download stage first")
    return out


def _id_key(clip_id: str) -> tuple[int, str]:
    return (int(clip_id), clip_id) if clip_id.isdigit() else (1 << 62, clip_id)


def unlisted_ids(raw_dir: Path) -> list[str]:
    """Clip files in ``raw/`` that no split file lists (in the ABAW release: the unlabelled test clips)."""
    listed = {i for ids in split_ids(raw_dir).values() for i in ids}
    return [s for s in clip_stems(raw_dir) if s not in listed]


def list_clips(raw_dir: Path) -> list[Clip]:
    """Every listed clip once, in split order (train, valid, test) then id: the order of every stage's output.
    An id listed in two splits belongs to the first (the raw-data report names the repeat)."""
    seen: dict[str, str] = {}
    for split, ids in split_ids(raw_dir).items():
        for i in ids:
            if i in seen:
                log.warning("id %s is listed in %s and %s; used once, under %s", i, seen[i], split, seen[i])
            else:
                seen[i] = split
    clips = [Clip(i, s, clip_path(raw_dir, i)) for i, s in seen.items()]
    clips.sort(key=lambda c: (SPLITS.index(c.split), *_id_key(c.id)))
    return clips


def label_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The six label columns of a split table as floats (NaN where a cell is not a number)."""
    return frame[list(EMOTIONS)].apply(lambda c: pd.to_numeric(c, errors="coerce"))


def has_labels(frame: pd.DataFrame) -> bool:
    return "Filename" in frame.columns and set(EMOTIONS) <= set(frame.columns)


def read_labels(raw_dir: Path) -> pd.DataFrame:
    """Usable labels of every labelled split file, indexed by id. Rows the raw validation reported (NaN,
    outside [0, 1], not a number, a repeated id) are left out here with a warning, never trained on."""
    frames = []
    ids = ClipIds(raw_dir)
    for split in SPLITS:
        path = split_path(raw_dir, split)
        if not path.is_file():
            continue
        table = read_split(path)
        if not has_labels(table):
            continue
        values = label_values(table)
        values.index = [ids.resolve(f)[0] for f in table["Filename"]]
        bad = values.isna().any(axis=1) | ((values < 0) | (values > 1)).any(axis=1)
        if bad.any():
            log.warning("%s: %d row(s) with unusable labels left out: %s", path.name, int(bad.sum()),
                        ", ".join(values.index[bad][:20]))
        frames.append(values[~bad])
    labels = pd.concat(frames) if frames else pd.DataFrame(columns=list(EMOTIONS), dtype=float)
    repeated = labels.index.duplicated(keep="first")
    if repeated.any():
        log.warning("ids listed more than once, first row kept: %s", ", ".join(labels.index[repeated][:20]))
    return labels[~repeated]


def read_latents(raw_dir: Path) -> pd.DataFrame | None:
    """What the generator rendered per clip (embedded dataset only; None for real data)."""
    path = Path(raw_dir) / GENERATOR_DIR / LATENTS_FILE
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False) if path.is_file() else None


# ----------------------------------------------------------------------------- transcripts
def read_transcripts(path: Path, required: tuple[str, ...] | list[str] = TRANSCRIPT_COLUMNS) -> pd.DataFrame:
    """A transcript table (or part) as written: ids and text as strings (empty text stays ''), numbers as floats.
    ``DatasetError`` names the file when a ``required`` column is missing."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(required) - set(frame.columns)
    if missing:
        raise DatasetError(f"{path}: transcripts table lacks column(s) {', '.join(sorted(missing))}")
    for col in ("avg_logprob", "no_speech_prob", "compression_ratio", "duration_s"):
        if col in frame:
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="coerce")
    return frame[[c for c in TRANSCRIPT_COLUMNS if c in frame.columns]]


def transcript_texts(path: Path) -> dict[str, str | None]:
    """id -> transcript text; None when the clip has no usable transcript (empty, no audio, error)."""
    table = read_transcripts(path, required=("id", "text", "status"))
    return {r.id: (r.text.strip() or None) if r.status == "ok" else None for r in table.itertuples()}
