"""md_table, the one markdown table renderer, and the ablation table built on it (small hand-made frames)."""

import math

import numpy as np
import pandas as pd

from emi.config import EMOTIONS
from emi.report.markdown import ablation_markdown, mixed_attribution, robustness_verdict
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


def test_ablation_markdown_has_the_grid_with_mean_sd_and_marks_differences_past_2_sd():
    out = ablation_markdown(pd.DataFrame([_cell("quality", 0.6, 0.01, 0.0, 0.0, False),
                                          _cell("average", 0.5, 0.02, -0.1, 0.01, True),
                                          _cell("linear probe", 0.58, 0.0, -0.02, 0.015, False)]))
    lines = out.splitlines()
    assert lines[0] == "# Ablation (validation split)" and out.endswith("\n")
    assert lines[2].startswith("| modalities | fusion | inputs | r mean | r Admiration |")
    assert lines[2].endswith("| mse | Δ r vs full |")
    assert "reused" not in out  # only the table's columns
    assert lines[5].startswith("| V+A+T | average | aligned | 0.5000 ± 0.0200 | 0.1000 |")
    assert lines[5].endswith("| 0.0200 ± 0.0010 | **-0.1000 ± 0.0100** |")  # 0.1 > 2 x 0.01: marked
    assert lines[6].startswith("| V+A+T | linear probe |") and lines[6].endswith("| -0.0200 ± 0.0150 |")
    assert "seconds" not in out and "3.1" not in out  # a DVC output: results only, no timings
    assert "Mean ± sd over 3 Stage-II trainings" in out and "2 sd" in out
    one = ablation_markdown(pd.DataFrame([_cell("quality", 0.6, float("nan"), 0.0, float("nan"), False, 1)]))
    assert "| 0.6000 | 0.1000 |" in one and "no difference is marked" in one


def test_robustness_verdict_says_whether_the_damaged_weight_falls():
    nan = float("nan")
    table = pd.DataFrame([
        {"condition": "clean", "fusion": "quality", "weight_A": 0.4, "delta_pearson": 0.0, "loss_avoided": nan,
         "exceeds_2sd": False},
        {"condition": "clean", "fusion": "average", "weight_A": 1 / 3, "delta_pearson": 0.0, "loss_avoided": nan,
         "exceeds_2sd": False},
        {"condition": "missing_audio", "fusion": "quality", "weight_A": 0.0, "delta_pearson": -0.05,
         "loss_avoided": 0.5, "exceeds_2sd": True},
        {"condition": "missing_audio", "fusion": "average", "weight_A": 0.0, "delta_pearson": -0.10,
         "loss_avoided": nan, "exceeds_2sd": False},
        {"condition": "mixed", "fusion": "quality", "weight_A": 0.3, "delta_pearson": -0.01, "loss_avoided": nan,
         "exceeds_2sd": False},
        {"condition": "mixed", "fusion": "average", "weight_A": 0.3, "delta_pearson": 0.01, "loss_avoided": nan,
         "exceeds_2sd": False},
    ])
    line, mixed = robustness_verdict(table, {"missing_audio": "A", "occluded_face": "V"})
    assert "**missing_audio**" in line and "A falls (0.400 → 0.000)" in line and "quality degrades less" in line
    assert "quality avoids 50% of average's loss" in line and "exceeds 2 sd" in line
    assert mixed.startswith("- **mixed**:") and "average does not lose" in mixed
    table.loc[table.condition.eq("mixed") & table.fusion.eq("average"), "delta_pearson"] = -0.001
    assert "within 2 sd of its seed noise" in robustness_verdict(table, {})[0]


def test_mixed_attribution_splits_the_loss_into_missing_modalities_and_visible_damage():
    rows = []
    for fusion, deltas, dropped in (("quality", (-0.004, -0.002, -0.008, -0.006), (-0.010, -0.012)),
                                    ("average", (-0.001, 0.001, -0.009, -0.011), (-0.002, -0.004))):
        for kind, masked, d, dd in zip(("occluded_face", "noisy_audio", "missing_audio", "missing_text"),
                                       (False, False, True, True), deltas, (*dropped, *deltas[2:])):
            rows.append({"damage": kind, "masked": masked, "fusion": fusion, "n": 4, "delta_pearson_kind": d,
                         "delta_pearson_kind_dropped": dd})
    quality, average = mixed_attribution(pd.DataFrame(rows))
    assert "quality: the kinds' separate losses sum to -0.0200; 70% of it comes from missing modalities " \
        "(missing_audio, missing_text)" in quality
    assert "would change mean Pearson by -0.0160" in quality  # (-0.010 - 0.012) - (-0.004 - 0.002)
    assert "average: the kinds' separate losses sum to -0.0200; 100% of it" in average
    rows = [dict(r, delta_pearson_kind=0.01) for r in rows]
    assert mixed_attribution(pd.DataFrame(rows)) == []  # no loss: nothing to attribute
