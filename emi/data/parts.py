"""Transcript parts: the unit of resume of ``transcribe``. A part is a CSV of ``transcribe.shard_size`` rows
beside a JSON receipt, written last, that holds the fingerprint of what the rows were computed from (settings,
clip ids, splits, file hashes) and the CSV's hash; a part whose receipt does not match is computed again."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from emi.data.dataset import TRANSCRIPT_COLUMNS, Clip
from emi.utils import fingerprint, sha256_file, write_json, write_text

PARTS_DIR = "parts"
PART_FORMAT = 2  # bump when a part's columns or their meaning change: old parts are recomputed (2: compression_ratio)
_PART_RE = re.compile(r"^part-(\d{5})\.(csv|json)$")


def write_transcripts(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame[TRANSCRIPT_COLUMNS].to_csv(index=False))


def file_hashes(clips: list[Clip], cached: dict[str, list]) -> dict[str, list]:
    """id -> [size, mtime_ns, sha256]; a file unchanged in size and mtime since the last run is not re-read."""
    out: dict[str, list] = {}
    for c in clips:
        if not c.path.is_file():
            out[c.id] = [None, None, None]
            continue
        st = c.path.stat()
        old = cached.get(c.id)
        same = isinstance(old, list) and len(old) == 3 and old[:2] == [st.st_size, st.st_mtime_ns]
        out[c.id] = old if same else [st.st_size, st.st_mtime_ns, sha256_file(c.path)]
    return out


def _read_receipt(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class Part:
    """Part ``k`` of the clips in ``parts_dir``, fingerprinted against ``settings`` when created."""

    csv: Path
    receipt: Path
    clips: list[Clip]
    hashes: dict[str, list]
    fingerprint: str

    @classmethod
    def at(cls, parts_dir: Path, k: int, clips: list[Clip], settings: dict[str, Any]) -> Part:
        csv, receipt = parts_dir / f"part-{k:05d}.csv", parts_dir / f"part-{k:05d}.json"
        cached = _read_receipt(receipt).get("files")
        hashes = file_hashes(clips, cached if isinstance(cached, dict) else {})
        key = fingerprint({"settings": settings, "clips": [[c.id, c.split, hashes[c.id][2]] for c in clips]})
        return cls(csv, receipt, clips, hashes, key)

    def is_done(self) -> bool:
        meta = _read_receipt(self.receipt)
        try:
            return meta.get("fingerprint") == self.fingerprint and meta.get("csv_sha256") == sha256_file(self.csv)
        except OSError:
            return False

    def write(self, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
        self.receipt.unlink(missing_ok=True)  # the receipt marks a finished part: never pair an old one with new rows
        write_transcripts(self.csv, pd.DataFrame(rows, columns=TRANSCRIPT_COLUMNS))
        write_json(self.receipt, {"fingerprint": self.fingerprint, "csv_sha256": sha256_file(self.csv),
                                  "settings": settings, "files": self.hashes})


def remove_stale_parts(parts_dir: Path, n_parts: int) -> None:
    """Parts numbered ``n_parts`` and up (left by a run over more clips) are deleted."""
    for p in parts_dir.glob("part-*"):
        m = _PART_RE.match(p.name)
        if m and int(m.group(1)) >= n_parts:
            p.unlink(missing_ok=True)
