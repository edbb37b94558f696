"""Finished Stage-II trainings kept outside a stage's outputs (``emi.paths.work_dir``), so a grid of trainings that
was killed, or that DVC started again, trains only what it had not finished and ends with the same table.

A record is a training's scores (JSON) and, where the stage keeps the model, its weights file. Its key is everything
the result depends on: the Stage-II settings, the seed, the inputs by content, the threads it trained on, and the
source of the code that trains and scores it, so a code change retrains instead of reading an old result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from emi.config import Stage2Params
from emi.data import sequences
from emi import metrics, model
from emi.train import fusion, loop
from emi.utils import atomic_path, fingerprint, sha256_file, write_json

TRAINING_CODE = (model, fusion, loop, sequences, metrics)
"""The modules whose source decides a trained model and its scores."""


def training_key(p: Stage2Params, seed: int, data_key: str, threads: int) -> str:
    code = [sha256_file(Path(m.__file__)) for m in TRAINING_CODE]
    return fingerprint({"stage2": p.model_dump(mode="json"), "seed": seed, "data": data_key, "threads": threads,
                        "code": code})


def _files(folder: Path, key: str) -> tuple[Path, Path]:
    return Path(folder) / f"{key}.json", Path(folder) / f"{key}.pt"


def finished(folder: Path, key: str, with_model: bool) -> dict | None:
    """The recorded result of training ``key`` (None when it never finished, or its model is wanted and missing)."""
    record, weights = _files(folder, key)
    if not record.is_file() or (with_model and not weights.is_file()):
        return None
    return json.loads(record.read_text(encoding="utf-8"))


def record(folder: Path, key: str, result: dict, model_file: Path | None = None) -> None:
    """Keep a finished training: its weights first, then the result (whose file says the training finished)."""
    record_file, weights = _files(folder, key)
    Path(folder).mkdir(parents=True, exist_ok=True)
    if model_file is not None:
        with atomic_path(weights) as tmp:
            shutil.copyfile(model_file, tmp)
    write_json(record_file, result)


def restore_model(folder: Path, key: str, to: Path) -> None:
    """Put a recorded training's weights where the stage keeps its models (same bytes)."""
    with atomic_path(to) as tmp:
        shutil.copyfile(_files(folder, key)[1], tmp)
