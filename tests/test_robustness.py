"""Robustness: the damage conditions, which clips they hit, and the condition x fusion table evaluate writes."""

import json

import numpy as np
import pandas as pd
import pytest

from emi.config import load_params
from emi.featurize import Damage
from emi.robustness import CONDITIONS, DAMAGED_MODALITY, FUSIONS, conditions, damaged_rows


def test_conditions_damage_the_modality_they_name():
    r = load_params(None, profile="tiny").evaluate.robustness
    damages = conditions(r)
    assert tuple(damages) == CONDITIONS and damages["clean"] is None
    assert damages["occluded_face"] == Damage(occlusion_box=tuple(r.occlusion_box))
    assert damages["noisy_audio"] == Damage(noise_snr_db=r.noise_snr_db)
    touched = {"V": "visual", "A": "audio", "T": "text"}
    for name, m in DAMAGED_MODALITY.items():
        assert damages[name].touched() == {touched[m]}, name


def test_damaged_rows_are_the_same_seeded_subset_for_every_condition():
    rows = damaged_rows(10, 0.5, seed=7)
    assert len(rows) == 5 and len(set(rows.tolist())) == 5 and (np.diff(rows) > 0).all()
    assert ((rows >= 0) & (rows < 10)).all()
    np.testing.assert_array_equal(rows, damaged_rows(10, 0.5, seed=7))
    assert not np.array_equal(rows, damaged_rows(10, 0.5, seed=8))
    assert len(damaged_rows(10, 0.0, seed=7)) == 0 and len(damaged_rows(10, 1.0, seed=7)) == 10
    assert len(damaged_rows(3, 0.5, seed=7)) == 2  # round(rate * n)


@pytest.mark.slow
def test_robustness_table_covers_every_condition_and_fusion(tiny_pipeline):
    run = tiny_pipeline
    table = pd.read_csv(run.reports / "robustness.csv")
    assert {(c, f) for c in CONDITIONS for f in FUSIONS} == set(zip(table.condition, table.fusion))
    assert len(table) == len(CONDITIONS) * len(FUSIONS)
    assert np.isfinite(table[["pearson_mean", "mse", "weight_V", "weight_A", "weight_T"]].to_numpy()).all()
    t = table.set_index(["condition", "fusion"])
    assert t.loc[("missing_audio", "quality"), "weight_A"] == 0.0  # masked: its weight is exactly 0
    assert t.loc[("missing_text", "quality"), "weight_T"] == 0.0
    assert t.loc[("missing_audio", "quality"), ["weight_V", "weight_T"]].sum() == pytest.approx(1, abs=1e-5)
    robust = json.loads((run.reports / "robustness.json").read_text())
    assert "missing_audio/quality" in robust and "clean/average" in robust
    # the clean re-decoded clips are the stored features: same predictions as the metrics
    assert robust["check"]["clean_vs_stored_max_abs_diff"] < 1e-4
    assert t.loc[("clean", "quality"), "pearson_mean"] == pytest.approx(run.result.metrics["valid"]["pearson_mean"],
                                                                        abs=1e-4)
