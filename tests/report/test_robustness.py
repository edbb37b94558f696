"""The robustness tables' words."""


import pandas as pd

from emi.report.robustness import mixed_attribution, robustness_verdict


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
