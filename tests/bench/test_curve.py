"""`emi bench curve`: the learning curve of the network against the ridge, from the pipeline's own stages."""

import json

import pytest

from emi.bench.curve import curve_markdown, kept_sizes, rows_of
from tests.conftest import EMI


def cell(mean: float, sd: float | None, diff: float | None, diff_sd: float | None, past: bool = False) -> dict:
    return {"pearson_mean": mean, "pearson_mean_sd": sd, "mse": 0.1, "mse_sd": 0.0, "diff_vs_full": diff,
            "diff_vs_full_sd": diff_sd, "exceeds_2sd": past}


ABLATION = {  # reports/ablation.json of the narrowed grid: V+A+T with each fusion, clip means and the probe
    "V+A+T/quality/both": cell(0.50, 0.01, 0.0, 0.0),
    "V+A+T/average/both": cell(0.47, 0.02, -0.03, 0.01, True),
    "V+A+T/concat/both": cell(0.51, 0.01, 0.01, 0.02),
    "V+A+T/gated/both": cell(0.49, 0.02, -0.01, 0.01),
    "V+A+T/quality/both/clip-mean": cell(0.44, 0.01, -0.06, 0.01, True),
    "V+A+T/linear probe/both": cell(0.42, 0.0, -0.08, 0.01, True),
    "V/quality/both": cell(0.30, 0.01, -0.2, 0.01, True),  # another modality set: not a row of the curve
}


def test_rows_and_paired_differences_come_from_the_ablation_table():
    rows, diffs = rows_of(ABLATION, "V+A+T", "quality", "both")
    assert list(rows) == ["full", "no_temporal", "fusion_quality", "fusion_average", "fusion_concat", "fusion_gated",
                          "linear_probe"]
    assert rows["full"] == rows["fusion_quality"] == {"mean": 0.50, "sd": 0.01}
    assert diffs["full_minus_probe"] == {"mean": 0.08, "sd": 0.01, "past_2sd": True}
    assert diffs["full_minus_no_temporal"] == {"mean": 0.06, "sd": 0.01, "past_2sd": True}
    assert diffs["fusion_minus_concat"] == {"mean": -0.01, "sd": 0.02, "past_2sd": False}  # behind, within noise
    assert set(diffs) == {"full_minus_probe", "full_minus_no_temporal", "fusion_minus_average", "fusion_minus_concat",
                          "fusion_minus_gated"}
    gated, _ = rows_of(ABLATION, "V+A+T", "gated", "both")  # another default fusion: its own cell is the full row
    assert gated["full"]["mean"] == 0.49 and "no_temporal" not in gated  # (no clip-mean cell of gated here)


def test_markdown_has_a_column_per_size_and_marks_differences_past_2_sd():
    rows, diffs = rows_of(ABLATION, "V+A+T", "quality", "both")
    curve = {"sizes": [{"clips": 300, "train_clips": 178, "rows": rows, "differences": diffs,
                        "seconds": {"download": 10.0, "trainings": 20.0}}]}
    lines = curve_markdown(curve)
    assert lines[0] == "| row | 300 clips (178 train) |"
    assert "| full_minus_probe | +0.0800 ± 0.0100 * |" in lines
    assert "| fusion_minus_concat | -0.0100 ± 0.0200 |" in lines and lines[-2] == "| wall time (s) | 30 |"


def test_a_run_keeps_the_earlier_sizes_of_the_same_recipe_and_refuses_another_recipe():
    identity = {"profile": "embedded", "seeds": 3, "recipe": {"fusion": "quality", "batch_pool": 1}}
    earlier = {"commit": "359c8ea", "machine": "AMD EPYC (AVX2), 2 cores", **identity,
               "sizes": [{"clips": 300, "rows": {}}, {"clips": 1000, "rows": {}}]}
    kept = kept_sizes(earlier, identity, [1000, 3000])  # 1000 is measured again: the new figures replace it
    assert kept == [{"commit": "359c8ea", "machine": "AMD EPYC (AVX2), 2 cores", "clips": 300, "rows": {}}]
    assert kept_sizes(None, identity, [300]) == []
    other = identity | {"recipe": {"fusion": "gated", "batch_pool": 1}}
    with pytest.raises(ValueError, match="another recipe.*--fresh"):
        kept_sizes(earlier, other, [3000])
    assert curve_markdown({"commit": "abc1234", "sizes": [{"clips": 300, "train_clips": 180, "rows": {},
                                                           "differences": {}, "seconds": {"trainings": 1.0},
                                                           **kept[0]}]})[-1] == "| commit | 359c8ea |"


@pytest.mark.slow  # two tiny datasets through the real stages
def test_bench_curve_runs_the_stages_and_the_rows_at_each_size(tmp_path):
    import subprocess

    out, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    proc = subprocess.run([EMI, "bench", "curve", "--profile", "tiny", "--clips", "12,8", "--work", str(tmp_path / "w"),
                           "--out", str(out), "--plot", str(plot)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    curve = json.loads(out.read_text())
    assert set(curve) >= {"commit", "machine", "sizes"} and curve["commit"] != "nogit"
    assert [s["clips"] for s in curve["sizes"]] == [8, 12]  # smallest first
    for size in curve["sizes"]:
        assert size["train_clips"] >= 2 and size["persons"] < size["clips"]
        assert {"full", "no_temporal", "linear_probe", "fusion_concat"} <= set(size["rows"])
        assert {"full_minus_probe", "full_minus_no_temporal", "fusion_minus_concat"} <= set(size["differences"])
        assert set(size["seconds"]) == {"download", "transcribe", "extract", "stage1", "augment", "trainings"}
        raw = tmp_path / "w" / f"n{size['clips']}" / "data" / "raw"
        assert sum(len((raw / f"{s}_split.csv").read_text().splitlines()) - 1
                   for s in ("train", "valid", "test")) == size["clips"]
    assert plot.stat().st_size > 10_000 and "| full_minus_probe |" in out.with_suffix(".md").read_text()
