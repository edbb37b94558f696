"""`emi bench project`: stage times fitted per unit they grow with and read at Hume-Vidmimic2's split sizes."""

import json
from pathlib import Path

import pytest

from emi.bench.project import HUME_SPLITS, fit, projection, projection_markdown, trainings, units
from emi.bench.scale import StageRun, gpu_samples
from emi.config import load_params
from tests.conftest import EMI

REPO = Path(__file__).resolve().parents[2]


def test_nvidia_smi_samples_give_the_busy_share_and_the_peak_memory():
    assert gpu_samples("40, 1000\n60, 3000\n[Not Supported], 5\n\n") == (0.5, 3000.0)
    assert gpu_samples("") == (None, None)


def test_each_stage_grows_with_its_own_unit():
    p = load_params(None, profile="paper")  # 50 epochs in both stages, the ablation grid x 3 seeds
    splits = {"train": 10, "valid": 4, "test": 6}
    assert units("extract", p, splits) == 20 and units("evaluate", p, splits) == 4
    assert units("stage1", p, splits) == 10 * p.stage1.schedule.epochs
    assert units("stage2", p, splits) == 10 * 50
    assert units("ablate", p, splits) == 10 * 50 * trainings(p) and trainings(p) % p.evaluate.seeds == 0
    # a length in optimizer steps draws the same clips whatever the data size
    e = load_params(None, profile="embedded")
    assert units("stage2", e, splits) == units("stage2", e, HUME_SPLITS) == 360 * e.stage2.batch_size


def test_fit_never_projects_less_work_as_faster():
    assert fit([10, 20], [12, 22]) == pytest.approx((2.0, 1.0))
    assert fit([10, 20], [22, 12]) == (17.0, 0.0)  # noise between two sizes: the mean, not a negative slope
    assert fit([5, 5], [3, 5]) == (4.0, 0.0)


def test_projection_reads_the_fits_at_the_real_split_sizes():
    p = load_params(None, profile="paper")
    splits = {100: {"train": 60, "valid": 20, "test": 20}, 200: {"train": 120, "valid": 40, "test": 40}}
    runs = [StageRun(n, "extract", 5 + 0.1 * n, 900, 0.4, 2000.0, n / 10) for n in (100, 200)]
    runs += [StageRun(n, "stage1", 3 + 0.002 * splits[n]["train"] * p.stage1.schedule.epochs, 1500, None, None, 1.0)
             for n in (100, 200)]
    proj = projection(runs, p, splits)
    ext, st1 = proj["stages"]["extract"], proj["stages"]["stage1"]
    assert ext["projected_s"] == pytest.approx(5 + 0.1 * 17_246, abs=0.1) and ext["gpu_busy"] == 0.4
    assert st1["projected_s"] == pytest.approx(3 + 0.002 * 8072 * p.stage1.schedule.epochs, abs=0.1)
    assert proj["projected_total_s"] == pytest.approx(ext["projected_s"] + st1["projected_s"])
    lines = projection_markdown(proj)
    assert lines[2].startswith("| extract | clips | 15.0 / 25.0 |") and "40 %" in lines[2]
    assert lines[-1].startswith("| **total** |")


@pytest.mark.slow  # also `emi bench scale`'s run of the stages, as their own processes
def test_bench_project_runs_the_stages_at_two_sizes_and_writes_the_projection(tmp_path):
    import subprocess

    out = tmp_path / "project.json"
    proc = subprocess.run([EMI, "bench", "project", "--profile", "tiny", "--clips", "8,4", "--work",
                           str(tmp_path / "w"), "--dvc-yaml", str(REPO / "dvc.yaml"), "--out", str(out),
                           "--stages", "download,transcribe,extract"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["commit"] != "nogit" and result["profile"] == "tiny"
    assert list(result["stages"]) == ["download", "transcribe", "extract"]
    assert result["projected_total_s"] == pytest.approx(sum(s["projected_s"] for s in result["stages"].values()))
    assert all(s["projected_s"] > 0 and s["disk_mb"] > 0 and s["gpu_busy"] is None for s in result["stages"].values())
    for n in (4, 8):  # each size generated with its own clips, split by person
        assert sum(result["sizes"][str(n)].values()) == n
        split_rows = sum(len((tmp_path / "w" / f"n{n}" / "data/raw" / f"{s}_split.csv").read_text().splitlines()) - 1
                         for s in ("train", "valid", "test"))
        assert split_rows == n
    assert [(r["clips"], r["stage"]) for r in result["runs"]][:3] == [(4, "download"), (4, "transcribe"),
                                                                       (4, "extract")]
    assert all(r["peak_rss_mb"] > 50 for r in result["runs"])  # each stage its own measured process
    assert "| **total** |" in proc.stdout
