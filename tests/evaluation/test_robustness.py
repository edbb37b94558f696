"""Robustness: the damage conditions, which clips they hit, and the condition x fusion table evaluate writes."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from emi.config import DAMAGE_KINDS, SIGNIFICANT_SD, load_params
from emi.features.damage import DAMAGED_MODALITY, Damage
from emi.evaluation.seeds import loss_avoided, mean_sd, paired_difference
from emi.evaluation.robustness import (CONDITIONS, MIXED, compared_fusions, Robustness, damage_plan, damaged_rows, damages,
                                       drop_damaged, masked, mixed_damage, robustness_table)
from emi.data.sequences import SequenceData


def test_damages_break_the_modality_they_name():
    r = load_params(None, profile="tiny").evaluate.robustness
    kinds = damages(r)
    assert tuple(kinds) == DAMAGE_KINDS and CONDITIONS == ("clean", *DAMAGE_KINDS, MIXED)
    assert kinds["occluded_face"] == Damage(occlusion_box=tuple(r.occlusion_box))
    assert kinds["noisy_audio"] == Damage(noise_snr_db=r.noise_snr_db)
    touched = {"V": "visual", "A": "audio", "T": "text"}
    for name, m in DAMAGED_MODALITY.items():
        assert kinds[name].touched() == {touched[m]}, name
    assert [name for name, d in kinds.items() if masked(d)] == ["missing_audio", "missing_text"]


def test_mixed_condition_gives_round_rate_n_clips_one_seeded_random_damage_each():
    plan = mixed_damage(60, 0.3, seed=7)
    assert len(plan) == 18 and list(plan) == sorted(plan) and all(0 <= i < 60 for i in plan)
    assert set(plan.values()) <= set(DAMAGE_KINDS) and len(set(plan.values())) > 1  # one kind per clip, kinds vary
    assert plan == mixed_damage(60, 0.3, seed=7) and plan != mixed_damage(60, 0.3, seed=8)
    assert len(mixed_damage(7, 0.3, seed=7)) == 2 and mixed_damage(10, 0.0, seed=7) == {}
    r = load_params(None, profile="tiny", overrides=["evaluate.robustness.rate=0.5",
                                                     "evaluate.robustness.mixed_rate=0.3"]).evaluate.robustness
    full = damage_plan(r, 10, seed=3)
    assert tuple(full) == CONDITIONS and full["clean"] == {} and full[MIXED] == mixed_damage(10, 0.3, 3)
    rows = damaged_rows(10, 0.5, 3).tolist()
    assert all(full[kind] == dict.fromkeys(rows, kind) for kind in DAMAGE_KINDS)  # the all-clips conditions as before


def test_drop_damaged_marks_only_the_damaged_modality_of_the_damaged_clips_missing():
    n = 6
    data = SequenceData([f"c{i}" for i in range(n)], [np.ones((4, 2), np.float32)] * n,
                        [np.ones((4, 3), np.float32)] * n, np.ones((n, 5), np.float32), np.ones((n, 3), bool), None)
    data.mask[5, 2] = False  # a clip without a transcript stays without one
    # rows 10..15 of the split: 11 lost its face, 13 its audio to noise, 20 is in another chunk
    out = drop_damaged(data, {11: "occluded_face", 13: "noisy_audio", 20: "occluded_face"}, start=10)
    expected = np.ones((n, 3), bool)
    expected[1, 0] = expected[3, 1] = expected[5, 2] = False
    assert (out.mask == expected).all()
    assert data.mask[1].all() and data.mask[3].all()  # the input is not changed
    assert out.visual is data.visual and out.ids == data.ids  # features as they are: only the mask says it


def _runs(deltas: dict[tuple[str, str], list[float]]) -> Robustness:
    """A measured robustness table: clean Pearson 0.6 per fusion and seed, the given deltas per condition."""
    rows = []
    for (cond, fusion), ds in deltas.items():
        for k, d in enumerate(ds):
            rows.append({"condition": cond, "fusion": fusion, "seed": k, "pearson_mean": 0.6 + d, "mse": 0.05,
                         "delta_pearson": d, "delta_pearson_dropped": d, "weight_V": 0.4, "weight_A": 0.3,
                         "weight_T": 0.3,
                         "weight_damaged": np.nan if cond == "clean" else 0.2, "n_damaged": 6, "n": 20})
    return Robustness(pd.DataFrame(rows), pd.DataFrame(), {})


def test_summary_is_mean_sd_over_seeds_loss_avoided_and_a_2sd_mark():
    table, per_kind = robustness_table(_runs({
        ("clean", "quality"): [0, 0, 0], ("clean", "average"): [0, 0, 0],
        ("mixed", "quality"): [-0.02, -0.03, -0.04], ("mixed", "average"): [-0.08, -0.09, -0.10],
        ("noisy_audio", "quality"): [-0.01, 0.00, 0.01], ("noisy_audio", "average"): [0.01, 0.00, 0.02],
        ("missing_audio", "quality"): [-0.01, 0.00, 0.01], ("missing_audio", "average"): [-0.01, 0.01, -0.03],
        ("missing_text", "quality"): [-0.05, -0.02, -0.08], ("missing_text", "average"): [-0.06, -0.05, -0.04]}))
    t = table.set_index(["condition", "fusion"])
    assert t.loc[("mixed", "quality"), "pearson_mean"] == pytest.approx(0.57)
    assert t.loc[("mixed", "quality"), "pearson_mean_sd"] == pytest.approx(0.01)  # sample sd over 3 seeds
    assert (t["seeds"] == 3).all() and t.loc[("mixed", "average"), "n_damaged"] == 6
    # quality loses 0.03, average 0.09: quality avoids 1 - 0.03 / 0.09 = 2/3 of average's loss
    assert t.loc[("mixed", "quality"), "loss_avoided"] == pytest.approx(2 / 3)
    assert t.loc[("mixed", "quality"), "fusion_minus_average"] == pytest.approx(0.06)
    assert t.loc[("mixed", "quality"), "fusion_minus_average_sd"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc[("mixed", "quality"), "exceeds_2sd"]  # the same gap on every seed
    assert math.isnan(t.loc[("noisy_audio", "quality"), "loss_avoided"])  # average gains: no loss to avoid
    assert math.isnan(t.loc[("missing_audio", "quality"), "loss_avoided"])  # average's loss -0.01 ± 0.02: noise
    assert not t.loc[("missing_text", "quality"), "exceeds_2sd"]  # 0 mean difference vs its seed-to-seed noise
    assert math.isnan(t.loc[("mixed", "average"), "loss_avoided"])  # said once per condition, on the quality row
    assert per_kind.empty


def test_loss_avoided_and_paired_difference_arithmetic():
    assert loss_avoided(-0.02, -0.08) == pytest.approx(0.75)
    assert loss_avoided(-0.08, -0.08) == 0 and loss_avoided(0.0, -0.1) == 1 and loss_avoided(-0.2, -0.1) == -1
    assert loss_avoided(-0.01, 0.0) is None and loss_avoided(-0.01, 0.02) is None
    # average's loss within 2 sd of its seed noise: a ratio to noise is no evidence
    assert loss_avoided(-0.01, -0.001, sd_average=0.005) is None
    assert loss_avoided(-0.01, -0.02, sd_average=0.005) == pytest.approx(0.5)
    mean, sd, exceeds = paired_difference(np.array([0.62, 0.60, 0.64]), np.array([0.60, 0.59, 0.61]))
    assert mean == pytest.approx(0.02) and sd == pytest.approx(np.std([0.02, 0.01, 0.03], ddof=1))
    assert exceeds == (0.02 > SIGNIFICANT_SD * sd)
    _, sd_one, marked = paired_difference(np.array([0.7]), np.array([0.6]))
    assert math.isnan(sd_one) and not marked  # one seed: no sd, no mark
    frame = mean_sd(pd.DataFrame({"cell": ["a", "a", "b"], "x": [1.0, 3.0, 5.0]}), ["cell"], ["x"])
    assert frame["x"].tolist() == [2.0, 5.0] and frame["x_sd"].iloc[0] == pytest.approx(np.sqrt(2))
    assert math.isnan(frame["x_sd"].iloc[1])  # one seed: no sd


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
    assert {(c, f) for c in CONDITIONS for f in compared_fusions("quality")} == set(zip(table.condition, table.fusion))
    assert len(table) == len(CONDITIONS) * len(compared_fusions("quality"))
    assert np.isfinite(table[["pearson_mean", "mse", "weight_V", "weight_A", "weight_T"]].to_numpy()).all()
    t = table.set_index(["condition", "fusion"])
    assert t.loc[("missing_audio", "quality"), "weight_A"] == 0.0  # masked: its weight is exactly 0
    assert t.loc[("missing_text", "quality"), "weight_T"] == 0.0
    assert t.loc[("missing_audio", "quality"), ["weight_V", "weight_T"]].sum() == pytest.approx(1, abs=1e-5)
    # where the loss comes from: a missing modality is already dropped; the other damage also has a dropped score
    for kind in ("missing_audio", "missing_text"):
        assert (t.loc[kind, "delta_pearson_dropped"] == t.loc[kind, "delta_pearson"]).all()
    assert (t.loc["clean", "delta_pearson_dropped"] == 0).all()
    assert np.isfinite(t.loc["occluded_face", "delta_pearson_dropped"]).all()
    seeds = pd.read_csv(run.reports / "robustness_seeds.csv")
    assert (seeds["delta_pearson_dropped"] != seeds["delta_pearson"]).any()  # dropping a damaged face changes it
    robust = json.loads((run.reports / "robustness.json").read_text())
    assert "missing_audio/quality" in robust and "clean/average" in robust
    kinds = [v for k, v in robust.items() if k.startswith("mixed_weights/")]
    assert kinds and all({"delta_pearson_kind", "delta_pearson_kind_dropped", "masked"} <= set(v) for v in kinds)
    # the clean re-decoded clips are the stored features: same predictions as the metrics
    assert robust["check"]["clean_vs_stored_max_abs_diff"] < 1e-4
    assert t.loc[("clean", "quality"), "pearson_mean"] == pytest.approx(run.result.metrics["valid"]["pearson_mean"],
                                                                        abs=1e-4)


@pytest.mark.slow  # the robustness pass on the tiny pipeline's valid clips
def test_robustness_compare_scores_model_sets_on_the_same_damaged_clips(tiny_pipeline, tmp_path):
    """benchmarks/robustness_compare.py: a set against itself differs by exactly 0 in every condition; its scores
    are evaluate's robustness scores of the same models."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "robustness_compare.py"
    spec = importlib.util.spec_from_file_location("robustness_compare", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    models = tiny_pipeline.layout.ablation_models
    result = bench.compare(tiny_pipeline.params, tiny_pipeline.root, {"a": models, "b": models}, "average")
    assert list(result["conditions"]) == list(CONDITIONS)
    table = pd.read_csv(tiny_pipeline.reports / "robustness.csv").set_index(["condition", "fusion"])
    for cond, row in result["conditions"].items():
        assert row["a_minus_b"]["mean"] == 0 and not row["a_minus_b"]["past_2sd"]
        assert row["a"]["mean"] == pytest.approx(table.loc[(cond, "average"), "pearson_mean"], abs=1e-6)
    lines = bench.markdown(result)
    assert lines[0] == "| condition | a | b | a − b |" and len(lines) == 2 + len(CONDITIONS)
    with pytest.raises(SystemExit, match="VAT-concat-both.pt: not found"):
        bench.compare(tiny_pipeline.params, tiny_pipeline.root, {"a": models, "b": models}, "concat")
