"""The one markdown table renderer."""

import math

import numpy as np
import pandas as pd

from emi.config import EMOTIONS
from emi.report.tables import md_table


def test_floats_get_the_digits_and_nan_is_a_dash():
    out = md_table(pd.DataFrame({"name": ["a", "b"], "r": [0.123456, float("nan")]}), digits=3)
    assert out.splitlines() == ["| name | r |", "|---|---|", "| a | 0.123 |", "| b | – |"]
    assert md_table([{"x": np.float32(0.5)}, {"x": math.nan}]).splitlines()[2:] == ["| 0.5000 |", "| – |"]


def test_ints_with_a_none_stay_ints():
    rows = [{"direction": "v2t", "pairs": 12}, {"direction": "a2t", "pairs": None}]
    lines = md_table(rows).splitlines()
    assert lines[2] == "| v2t | 12 |" and lines[3] == "| a2t | None |"  # not 12.0000 (a float column)


def test_formats_headers_columns_and_cells_that_would_break_the_table():
    frame = pd.DataFrame({"a": [1.23456], "seconds": [12.345], "note": ["x|y\nz"]})
    out = md_table(frame, formats={"seconds": ".1f"}, headers={"a": "A"}, columns=["note", "a", "seconds"])
    assert out.splitlines() == ["| note | A | seconds |", "|---|---|---|", "| x\\|y z | 1.2346 | 12.3 |"]
    assert md_table([], columns=["x", "y"]).splitlines() == ["| x | y |", "|---|---|"]
    assert md_table([{"ok": True}]).splitlines()[2] == "| True |"  # a bool is not a number to format


def _cell(fusion: str, mean: float, sd: float, diff: float, diff_sd: float, exceeds: bool, seeds: int = 3) -> dict:
    return {"modalities": "V+A+T", "fusion": fusion, "inputs": "aligned", "pearson_mean": mean, "pearson_mean_sd": sd,
            **{f"pearson_{e}": 0.1 for e in EMOTIONS}, "mse": 0.02, "mse_sd": 0.001, "seeds": seeds,
            "diff_vs_full": diff, "diff_vs_full_sd": diff_sd, "exceeds_2sd": exceeds, "seconds": 3.14159,
            "reused": False}
