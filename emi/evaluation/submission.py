"""The ABAW submission file: one row per test clip in the split file's order, the official header."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, SPLIT_HEADER, Params
from emi.features.store import skipped_clips
from emi.utils import write_text

log = logging.getLogger(__name__)


class SubmissionError(RuntimeError):
    """Too many test clips without a prediction to write an honest submission; the message lists them."""


def submission(test_ids: list[str], predicted: pd.DataFrame, fill: np.ndarray,
               max_error_fraction: float, rule: str = "mean") -> tuple[pd.DataFrame, list[str]]:
    """ABAW rows for every test id in the split file's order (``Filename`` = the clip's id, its file stem).

    A test clip that reached no prediction (skipped as unreadable by an earlier stage) is handled by ``rule``
    (``evaluate.unreadable_test``) when such clips are within the dataset's error tolerance
    (``data.max_error_fraction``): ``mean`` submits ``fill`` (the mean training label: the constant with the lowest
    expected MSE, neutral for Pearson), ``drop`` leaves its row out. Beyond the tolerance this is an error that
    lists them, since a submission with guessed rows would misstate the model. Returns the table and the ids
    without a prediction. An id listed twice is submitted once (the raw-data report names the repeat)."""
    repeated = sorted({i for i in test_ids if test_ids.count(i) > 1})
    if repeated:
        log.warning("submission: test ids listed more than once, submitted once: %s", ", ".join(repeated))
    test_ids = list(dict.fromkeys(test_ids))
    missing = [i for i in test_ids if i not in predicted.index]
    if missing and len(missing) > max_error_fraction * len(test_ids):
        raise SubmissionError(f"{len(missing)} of {len(test_ids)} test clip(s) have no prediction (over the "
                            f"tolerated {max_error_fraction:.1%}): {', '.join(missing)}")
    if missing:
        log.warning("submission: %d test clip(s) without a prediction %s: %s", len(missing),
                    "get the mean training label" if rule == "mean" else "are left out", ", ".join(missing))
    if rule == "drop":
        test_ids = [i for i in test_ids if i in predicted.index]
    elif rule != "mean":
        raise ValueError(f"unknown rule {rule!r} for test clips without a prediction (mean | drop)")
    values = np.stack([predicted.loc[i, list(EMOTIONS)].to_numpy(float) if i in predicted.index else fill
                       for i in test_ids]) if test_ids else np.zeros((0, len(EMOTIONS)))
    table = pd.DataFrame(np.clip(values, 0, 1), columns=list(EMOTIONS))
    table.insert(0, "Filename", test_ids)
    return table[list(SPLIT_HEADER)], missing


def write_submission(reports_dir: Path, test_ids: list[str], predicted: pd.DataFrame, fill: np.ndarray,
                     params: Params, features_dir: Path) -> tuple[Path, dict]:
    """``submission.csv`` (``submission`` under ``data.max_error_fraction`` and ``evaluate.unreadable_test``) and
    what the report says of it: rows, test clips, the rule, and each unpredicted clip with the reason extraction
    gave."""
    table, unpredicted = submission(test_ids, predicted, fill, params.data.max_error_fraction,
                                    params.evaluate.unreadable_test)
    path = write_text(Path(reports_dir) / "submission.csv", table.to_csv(index=False, float_format="%.6f"))
    reasons = skipped_clips(features_dir)
    return path, {"rows": len(table), "test_clips": len(set(test_ids)), "rule": params.evaluate.unreadable_test,
                  "unpredicted": {i: reasons.get(i, "not in the feature index") for i in unpredicted}}
