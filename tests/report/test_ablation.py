"""The ablation table in markdown."""

import pandas as pd

from emi.config import EMOTIONS
from emi.report.ablation import ablation_markdown


def _cell(fusion: str, mean: float, sd: float, diff: float, diff_sd: float, exceeds: bool, seeds: int = 3) -> dict:
    return {"modalities": "V+A+T", "fusion": fusion, "inputs": "aligned",
            "blocks": "ridge" if fusion == "linear probe" else "TCN + BiLSTM", "pearson_mean": mean, "pearson_mean_sd": sd,
            **{f"pearson_{e}": 0.1 for e in EMOTIONS}, "mse": 0.02, "mse_sd": 0.001, "seeds": seeds,
            "diff_vs_full": diff, "diff_vs_full_sd": diff_sd, "exceeds_2sd": exceeds, "seconds": 3.14159,
            "reused": False}

def test_ablation_markdown_has_the_grid_with_mean_sd_and_marks_differences_past_2_sd():
    out = ablation_markdown(pd.DataFrame([_cell("quality", 0.6, 0.01, 0.0, 0.0, False),
                                          _cell("average", 0.5, 0.02, -0.1, 0.01, True),
                                          _cell("linear probe", 0.58, 0.0, -0.02, 0.015, False)]))
    lines = out.splitlines()
    assert lines[0] == "# Ablation (validation split)" and out.endswith("\n")
    assert lines[2].startswith("| modalities | fusion | inputs | blocks | r mean | r Admiration |")
    assert lines[2].endswith("| mse | Δ r vs full |")
    assert "reused" not in out  # only the table's columns
    assert lines[5].startswith("| V+A+T | average | aligned | TCN + BiLSTM | 0.5000 ± 0.0200 | 0.1000 |")
    assert lines[5].endswith("| 0.0200 ± 0.0010 | **-0.1000 ± 0.0100** |")  # 0.1 > 2 x 0.01: marked
    assert lines[6].startswith("| V+A+T | linear probe |") and lines[6].endswith("| -0.0200 ± 0.0150 |")
    assert "seconds" not in out and "3.1" not in out  # a DVC output: results only, no timings
    assert "Mean ± sd over 3 Stage-II trainings" in out and "2 sd" in out
    one = ablation_markdown(pd.DataFrame([_cell("quality", 0.6, float("nan"), 0.0, float("nan"), False, 1)]))
    assert "| 0.6000 | 0.1000 |" in one and "no difference is marked" in one
