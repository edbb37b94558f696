"""The ABAW submission file: one row per test clip in the split file's order, the official header."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from emi.config import EMOTIONS, SPLIT_HEADER

log = logging.getLogger(__name__)


class SubmissionError(RuntimeError):
    """Too many test clips without a prediction to write an honest submission; the message lists them."""


def submission(test_ids: list[str], predicted: pd.DataFrame, fill: np.ndarray,
               max_error_fraction: float) -> tuple[pd.DataFrame, list[str]]:
    """ABAW rows for every test id in the split file's order.

    A test clip that reached no prediction (skipped as unreadable by an earlier stage) gets ``fill`` (the mean
    training label: the constant with the lowest expected MSE, neutral for Pearson) when such clips are within
    the dataset's error tolerance (``data.max_error_fraction``); beyond it, this is an error that
    lists them, since a submission with guessed rows would misstate the model. An id listed twice is submitted
    once (the raw-data report names the repeat)."""
    repeated = sorted({i for i in test_ids if test_ids.count(i) > 1})
    if repeated:
        log.warning("submission: test ids listed more than once, submitted once: %s", ", ".join(repeated))
    test_ids = list(dict.fromkeys(test_ids))
    missing = [i for i in test_ids if i not in predicted.index]
    if missing and len(missing) > max_error_fraction * len(test_ids):
        raise SubmissionError(f"{len(missing)} of {len(test_ids)} test clip(s) have no prediction (over the "
                            f"tolerated {max_error_fraction:.1%}): {', '.join(missing)}")
    if missing:
        log.warning("submission: %d test clip(s) without a prediction get the mean training label: %s",
                    len(missing), ", ".join(missing))
    values = np.stack([predicted.loc[i, list(EMOTIONS)].to_numpy(float) if i in predicted.index else fill
                       for i in test_ids]) if test_ids else np.zeros((0, len(EMOTIONS)))
    table = pd.DataFrame(np.clip(values, 0, 1), columns=list(EMOTIONS))
    table.insert(0, "Filename", test_ids)
    return table[list(SPLIT_HEADER)], missing
