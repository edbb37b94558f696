"""The ABAW submission: one row per test clip in the split file's order, the official header, values in [0, 1];
a test clip without a prediction is filled within the error tolerance and an error beyond it."""

import numpy as np
import pandas as pd
import pytest

from emi.config import EMOTIONS, SPLIT_HEADER
from emi.evaluation.submission import SubmissionError, submission


def test_rows_follow_the_split_order_with_the_abaw_header_and_values_clipped():
    ids = ["003", "001", "002", "001"]  # split order, one id listed twice
    predicted = pd.DataFrame([[0.2] * 6, [1.4] * 6, [-0.1] * 6], index=["001", "002", "003"], columns=list(EMOTIONS))
    table, filled = submission(ids, predicted, np.full(6, 0.5), max_error_fraction=0.0)
    assert list(table.columns) == list(SPLIT_HEADER) and filled == []
    assert table["Filename"].tolist() == ["003", "001", "002"]  # the repeat is submitted once
    np.testing.assert_allclose(table[list(EMOTIONS)].to_numpy(float), [[0.0] * 6, [0.2] * 6, [1.0] * 6])


def test_no_test_ids_is_an_empty_table():
    table, filled = submission([], pd.DataFrame(columns=list(EMOTIONS)), np.full(6, 0.5), max_error_fraction=0.0)
    assert list(table.columns) == list(SPLIT_HEADER) and len(table) == 0 and filled == []


def test_test_clip_without_prediction_fails_beyond_tolerance_and_is_filled_within():
    ids = ["001", "002", "003", "004"]
    predicted = pd.DataFrame(np.full((3, 6), 0.25), index=ids[:3], columns=list(EMOTIONS))
    fill = np.full(6, 0.5)
    with pytest.raises(SubmissionError, match="004"):
        submission(ids, predicted, fill, max_error_fraction=0.0)
    table, filled = submission(ids, predicted, fill, max_error_fraction=0.25)
    assert filled == ["004"] and table["Filename"].tolist() == ids
    np.testing.assert_allclose(table.iloc[3][list(EMOTIONS)].to_numpy(float), fill)


def test_drop_rule_leaves_the_unpredicted_row_out_and_still_names_it():
    ids = ["001", "002", "003", "004"]
    predicted = pd.DataFrame(np.full((3, 6), 0.25), index=["001", "002", "004"], columns=list(EMOTIONS))
    table, missing = submission(ids, predicted, np.full(6, 0.5), max_error_fraction=0.25, rule="drop")
    assert missing == ["003"] and table["Filename"].tolist() == ["001", "002", "004"]
    with pytest.raises(SubmissionError, match="003"):  # the tolerance holds whatever the rule
        submission(ids, predicted, np.full(6, 0.5), max_error_fraction=0.0, rule="drop")


@pytest.mark.slow
def test_submission_is_abaw_format_in_test_split_order(tiny_pipeline):
    """The file evaluate writes for the tiny pipeline."""
    run = tiny_pipeline
    text = (run.reports / "submission.csv").read_text()
    assert text.splitlines()[0] == ",".join(SPLIT_HEADER)
    sub = pd.read_csv(run.reports / "submission.csv", dtype={"Filename": str})
    order = pd.read_csv(run.raw / "test_split.csv", dtype={"Filename": str})["Filename"].tolist()
    assert sub["Filename"].tolist() == order
    values = sub[list(EMOTIONS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    assert all(len(cell.split(".")[1]) == 6 for cell in text.splitlines()[1].split(",")[1:])
    assert run.result.submission_unpredicted == []
