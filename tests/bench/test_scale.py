"""`emi bench scale`: every stage of dvc.yaml as its own measured process on generated datasets of growing size."""

import sys
from pathlib import Path

import pytest

from emi.bench.scale import StageRun, run_measured, scale_summary, stage_commands

REPO = Path(__file__).resolve().parents[2]


def test_stage_commands_are_dvc_yaml_s():
    commands = stage_commands(REPO / "dvc.yaml", ("download", "evaluate"))
    assert commands["download"][:2] == ["emi", "download"] and "--no-progress" in commands["download"]
    assert commands["evaluate"] == ["emi", "evaluate", "--root", ".", "--no-progress"]
    with pytest.raises(ValueError, match="no stage nonsense"):
        stage_commands(REPO / "dvc.yaml", ("nonsense",))


def test_peak_rss_is_the_measured_process_own(tmp_path):
    """wait4's rusage is per child: a process that allocates 300 MB reports it, the next small one does not."""
    big = [sys.executable, "-c", "import numpy as np; a = np.ones(300 * 2**20 // 8); print(a.sum())"]
    small = [sys.executable, "-c", "print(1)"]
    seconds, rss_big, code = run_measured(big, tmp_path, {}, tmp_path / "big.log")
    assert code == 0 and seconds > 0 and rss_big > 300
    _, rss_small, code = run_measured(small, tmp_path, {}, tmp_path / "small.log")
    assert code == 0 and rss_small < 100 < rss_big
    _, _, code = run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, {}, tmp_path / "bad.log")
    assert code == 3


def test_summary_gives_growth_and_a_linear_extrapolation():
    runs = [StageRun(n, "stage2", 10 + 0.5 * n, 1000 + 0.1 * n) for n in (100, 300, 1000)]
    head, _, row = scale_summary(runs, 12_660)
    assert "time x (300->1000)" in head and "RSS growth (300->1000)" in head
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "stage2" and cells[1] == "60.0 / 1010"
    assert cells[4] == "3.19 (clips x3.33)" and cells[5] == "+7 %"
    assert cells[6] == "6340 / 2266"  # 10 + 0.5 * 12660 s, 1000 + 0.1 * 12660 MB
