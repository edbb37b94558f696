"""``emi ablate``: the Table 3 grid on real Stage-I features of the tiny dataset."""

import json

import pandas as pd
import pytest

from emi.stages.ablate import ablation
from emi.stages.stage2 import stage2
from tests.conftest import tiny

pytestmark = pytest.mark.slow  # extract + Stage I + a grid of Stage II trainings


def test_ablation_grid_writes_one_table_and_reuses_the_stage2_model(tiny_aligned, tiny_dataset, tmp_path):
    trained = stage2(tiny(), tiny_aligned.aligned_path, tiny_dataset, tmp_path / "stage2", show_progress=False)
    table = ablation(tiny(), tiny_aligned.aligned_path, tiny_dataset, tmp_path, modality_sets=("V", "VAT"),
                     fusions=("quality", "average"), inputs=("both", "aligned"),
                     stage2_model=trained.model_path, models_dir=tmp_path / "cells")
    assert list(zip(table["modalities"], table["fusion"], table["inputs"])) == [
        ("V", "quality", "both"), ("V+A+T", "quality", "both"), ("V+A+T", "average", "both"),
        ("V+A+T", "quality", "aligned")]
    assert table["reused"].tolist() == [False, True, False, False]
    base = table[(table.modalities == "V+A+T") & (table.fusion == "quality") & (table.inputs == "both")]
    # the same model, scored in a 1-thread worker: equal up to float rounding
    assert base["pearson_mean"].item() == pytest.approx(trained.metrics["valid_pearson_mean"], abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["VAT-average-both.pt", "VAT-quality-aligned.pt"]
    assert (tmp_path / "ablation.md").read_text().count("\n") >= 6
    assert pd.read_csv(tmp_path / "ablation.csv")["pearson_mean"].notna().all()
    metrics = json.loads((tmp_path / "ablation.json").read_text())  # DVC metrics: two numbers per cell
    assert list(metrics) == ["V/quality/both", "V+A+T/quality/both", "V+A+T/average/both", "V+A+T/quality/aligned"]
    assert all(set(cell) == {"pearson_mean", "mse"} for cell in metrics.values())
    assert metrics["V/quality/both"]["pearson_mean"] == pytest.approx(table["pearson_mean"].iloc[0])
