"""The robustness tables' words."""


import pandas as pd

from emi.report.robustness import mixed_attribution, robustness_tables, robustness_verdict

nan = float("nan")


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


def test_the_model_fusion_is_compared_with_average_whatever_its_name():
    """A model trained with gated fusion: the words and the comparison table name gated, not quality."""
    rows = [{"condition": c, "fusion": f, "pearson_mean": 0.6, "pearson_mean_sd": 0.01, "delta_pearson": d,
             "delta_pearson_sd": 0.01, "delta_pearson_dropped": d, "delta_pearson_dropped_sd": 0.01, "mse": 0.05,
             "mse_sd": 0.0, "weight_V": 0.3, "weight_A": a, "weight_T": 0.3, "weight_damaged": a, "n_damaged": 5,
             "n": 20, "seeds": 3, "loss_avoided": 0.5 if f == "gated" and c != "clean" else nan,
             "fusion_minus_average": 0.02, "fusion_minus_average_sd": 0.01, "exceeds_2sd": False}
            for c, f, d, a in (("clean", "gated", 0.0, 0.4), ("clean", "average", 0.0, 0.4),
                               ("missing_audio", "gated", -0.02, 0.0), ("missing_audio", "average", -0.04, 0.0))]
    table = pd.DataFrame(rows)
    words = "\n".join(robustness_verdict(table, {"missing_audio": "A"}))
    assert "gated-fusion weight of A falls" in words and "gated avoids 50% of average's loss" in words
    assert "quality" not in words
    assert "### Gated vs average fusion" in "\n".join(robustness_tables(table, pd.DataFrame(), 0.3))
