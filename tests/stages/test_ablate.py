"""``emi ablate``: the Table 3 grid on real Stage-I features of the tiny dataset."""

import json
import math

import pandas as pd
import pytest

from emi.config import EMOTIONS
from emi.evaluation.ablation import CLIP_MEAN, RIDGE, TEMPORAL, ablation_table
from emi.stages.ablate import PROBE, ablation
from emi.stages.stage2 import stage2
from tests.conftest import tiny


def test_cells_are_mean_sd_over_seeds_with_the_paired_difference_to_the_full_model():
    rows = []
    for cell, values in {("V+A+T", "quality", "both"): [0.60, 0.62, 0.61],
                         ("V", "quality", "both"): [0.50, 0.53, 0.52],
                         ("V+A+T", "average", "both"): [0.60, 0.61, 0.615],
                         ("V+A+T", PROBE, "both"): [0.58] * 3}.items():
        for k, v in enumerate(values):
            rows.append(dict(zip(("modalities", "fusion", "inputs"), cell), seed=k,
                             blocks=RIDGE if cell[1] == PROBE else TEMPORAL, pearson_mean=v, mse=0.05 + k / 100,
                             **{f"pearson_{e}": v for e in EMOTIONS}, seconds=1.0, reused=cell[0] == "V+A+T" and k == 0
                             and cell[1] == "quality"))
    table = ablation_table(pd.DataFrame(rows), ("V+A+T", "quality", "both", TEMPORAL)).set_index(["modalities", "fusion"])
    full, v, avg, probe = (table.loc[k] for k in [("V+A+T", "quality"), ("V", "quality"), ("V+A+T", "average"),
                                                  ("V+A+T", PROBE)])
    assert full["pearson_mean"] == pytest.approx(0.61) and full["pearson_mean_sd"] == pytest.approx(0.01)
    assert full["mse"] == pytest.approx(0.06) and full["seeds"] == 3 and full["seconds"] == 3.0 and full["reused"]
    assert full["diff_vs_full"] == 0 and not full["exceeds_2sd"]
    assert v["diff_vs_full"] == pytest.approx(-0.0933333) and v["exceeds_2sd"]  # paired: -0.10, -0.09, -0.09
    assert avg["diff_vs_full"] == pytest.approx(-0.005 / 3) and not avg["exceeds_2sd"]  # within the seed noise
    # the probe has no seed: its sd is 0 and its difference's sd is the full model's
    assert probe["pearson_mean_sd"] == 0 and probe["diff_vs_full_sd"] == pytest.approx(0.01)
    assert probe["diff_vs_full"] == pytest.approx(-0.03) and probe["exceeds_2sd"]
    one = ablation_table(pd.DataFrame([r for r in rows if r["seed"] == 0]), ("V+A+T", "quality", "both", TEMPORAL))
    assert one["pearson_mean_sd"].isna().all() and not one["exceeds_2sd"].any() and math.isnan(
        one["diff_vs_full_sd"].iloc[1])


@pytest.mark.slow  # extract + Stage I + a grid of Stage II trainings
def test_ablation_grid_writes_one_table_and_reuses_the_stage2_model(tiny_aligned, tiny_dataset, tmp_path):
    trained = stage2(tiny(), tiny_aligned.aligned_path, tiny_dataset, tmp_path / "stage2", show_progress=False)
    # two worker processes, as the embedded default trains its cells (the tiny profile trains them in-process)
    table = ablation(tiny("stage2.ablation_workers=2"), tiny_aligned.aligned_path, tiny_dataset, tmp_path,
                     modality_sets=("V", "VAT"), fusions=("quality", "average"), inputs=("both", "aligned"),
                     stage2_model=trained.model_path, models_dir=tmp_path / "cells")
    assert list(zip(table["modalities"], table["fusion"], table["inputs"], table["blocks"])) == [
        ("V", "quality", "both", TEMPORAL), ("V+A+T", "quality", "both", TEMPORAL),
        ("V+A+T", "average", "both", TEMPORAL), ("V+A+T", "quality", "aligned", TEMPORAL),
        ("V+A+T", "quality", "both", CLIP_MEAN), ("V+A+T", PROBE, "both", RIDGE)]
    assert table["reused"].tolist() == [False, True, False, False, False, False]
    assert table["seeds"].tolist() == [1] * 6  # tiny: one training per cell
    base = table[(table.modalities == "V+A+T") & (table.fusion == "quality") & (table.inputs == "both")
                 & (table.blocks == TEMPORAL)]
    # the same model, scored in a 1-thread worker: equal up to float rounding
    assert base["pearson_mean"].item() == pytest.approx(trained.metrics["valid_pearson_mean"], abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["VAT-average-both.pt", "VAT-quality-aligned.pt"]
    assert (tmp_path / "ablation.md").read_text().count("\n") >= 6
    assert pd.read_csv(tmp_path / "ablation.csv")["pearson_mean"].notna().all()
    metrics = json.loads((tmp_path / "ablation.json").read_text())  # DVC metrics: mean and sd of two numbers per cell
    assert list(metrics) == ["V/quality/both", "V+A+T/quality/both", "V+A+T/average/both", "V+A+T/quality/aligned",
                             "V+A+T/quality/both/clip-mean", f"V+A+T/{PROBE}/both"]
    assert all(set(cell) == {"pearson_mean", "pearson_mean_sd", "mse", "mse_sd", "diff_vs_full", "diff_vs_full_sd",
                             "exceeds_2sd"} for cell in metrics.values())
    assert metrics["V/quality/both"]["pearson_mean"] == pytest.approx(table["pearson_mean"].iloc[0])
    assert metrics["V/quality/both"]["pearson_mean_sd"] is None  # one seed: no sd (null, not NaN)
    probe = metrics[f"V+A+T/{PROBE}/both"]
    assert -1 <= probe["pearson_mean"] <= 1 and probe["diff_vs_full"] == pytest.approx(
        probe["pearson_mean"] - metrics["V+A+T/quality/both"]["pearson_mean"], abs=1e-6)
    assert "| V+A+T | linear probe | both | ridge |" in (tmp_path / "ablation.md").read_text()
    assert "| V+A+T | quality | both | clip mean |" in (tmp_path / "ablation.md").read_text()
    assert len(pd.read_csv(tmp_path / "ablation_seeds.csv")) == 6


KILL_GRID = dict(modality_sets=("V", "VAT"), fusions=("quality", "average"), inputs=("both",))
KILLED = """
import sys
from pathlib import Path
import torch
from emi.config import load_params
from emi.stages.ablate import ablation
torch.set_num_threads(int(sys.argv[4]))  # the test process's: the same threads, the same trainings
root, aligned, raw = map(Path, sys.argv[1:4])
params = load_params(None, profile="tiny", overrides=sys.argv[5:])
ablation(params, aligned, raw, root / "reports", models_dir=root / "cells", **{grid})
""".format(grid=KILL_GRID)


@pytest.mark.slow  # a real ablation process, killed mid-grid, then the grid again
def test_a_killed_ablation_resumes_from_its_finished_trainings_and_ends_with_the_same_table(tiny_aligned,
                                                                                            tiny_dataset, tmp_path):
    """DVC deletes the stage's outputs before it runs again, so the finished trainings live in the work folder:
    the rerun trains only what the kill interrupted and writes the same files as a run never killed."""
    import subprocess
    import sys
    import time

    import torch

    from emi.paths import work_dir

    overrides = ("evaluate.seeds=2",)  # 8 trainings of about a second each
    whole = tmp_path / "whole"
    ablation(tiny(*overrides), tiny_aligned.aligned_path, tiny_dataset, whole / "reports",
             models_dir=whole / "cells", **KILL_GRID)
    killed = tmp_path / "killed"
    work = work_dir(killed / "cells")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(killed), str(tiny_aligned.aligned_path),
                             str(tiny_dataset), str(torch.get_num_threads()), *overrides])

    def finished() -> dict[str, int]:  # the trainings' records, not a record being written (.<name>.<random>.tmp.json)
        return {p.name: p.stat().st_mtime_ns for p in work.glob("*.json") if not p.name.startswith(".")}

    deadline = time.monotonic() + 300
    while not finished() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    before = finished()
    assert 1 <= len(before) < 8, f"the kill came after {len(before)} of 8 trainings"
    assert not (killed / "reports" / "ablation.csv").exists()

    ablation(tiny(*overrides), tiny_aligned.aligned_path, tiny_dataset, killed / "reports",
             models_dir=killed / "cells", **KILL_GRID)
    after = finished()
    assert len(after) == 8  # 4 cells (V, V+A+T, average fusion, clip means) x 2 seeds
    assert all(after[name] == mtime for name, mtime in before.items()), "a finished training was trained again"
    for name in ("ablation.csv", "ablation_seeds.csv", "ablation.json", "ablation.md"):
        assert (killed / "reports" / name).read_bytes() == (whole / "reports" / name).read_bytes(), name
    cells = sorted(p.name for p in (whole / "cells").iterdir())
    assert cells == sorted(p.name for p in (killed / "cells").iterdir()) and cells
    for name in cells:
        assert (killed / "cells" / name).read_bytes() == (whole / "cells" / name).read_bytes(), name
