"""`emi evaluate` on a real tiny pipeline (generated clips -> transcripts -> features -> Stage I -> Stage II ->
ablation -> evaluate -> register, laid out as emi.paths.Layout expects): the files a user and DVC read, the report,
the models it reads and never trains, and registration as a step of its own."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from emi.config import EMOTIONS
from emi.paths import Layout
from emi.evaluation.robustness import CONDITIONS, RobustnessError, compared_fusions
from emi.stages.evaluate import EvaluateError, evaluate
from tests.conftest import link_layout, pipeline_store

pytestmark = pytest.mark.slow  # every test here reads the tiny pipeline, built once per session


@pytest.fixture(scope="module")
def run(tiny_pipeline):
    with pipeline_store(tiny_pipeline.params):  # its registry, which another worker may have made
        yield tiny_pipeline


def test_dvc_metrics_file_is_a_headline_and_the_scores_file_has_every_dimension(run):
    """`dvc metrics show` / `dvc exp show` make a column of every metric: metrics.json holds the few numbers runs are
    compared by (at most 25), the per-dimension scores and the ceiling are in scores.json."""
    head = json.loads((run.reports / "metrics.json").read_text())
    scores_ = run.result.metrics
    assert set(head) == {"valid_pearson_mean", "valid_mse", "test_pearson_mean", "test_mse",
                         *[f"valid_pearson_{e}" for e in EMOTIONS], "valid_fraction_of_ceiling",
                         "test_fraction_of_ceiling", "ablation_full_pearson_mean", "ablation_full_pearson_sd",
                         "linear_probe_pearson_mean", "margin_over_linear_probe", "margin_over_other_blocks", "mixed_damage_delta_pearson_quality",
                         "mixed_damage_delta_pearson_average", "mixed_damage_loss_avoided"}
    assert len(head) <= 25
    assert head["valid_pearson_mean"] == scores_["valid"]["pearson_mean"] and head["test_mse"] == scores_["test"]["mse"]
    ablation = json.loads((run.reports / "ablation.json").read_text())
    full, probe = ablation["V+A+T/quality/both"], ablation["V+A+T/linear probe/both"]
    assert head["margin_over_linear_probe"] == pytest.approx(full["pearson_mean"] - probe["pearson_mean"])
    assert head["linear_probe_pearson_mean"] == probe["pearson_mean"]  # the registry's floor for a champion
    blocks = ablation["V+A+T/quality/both/clip-mean"]  # the same model without the TCN and BiLSTM
    assert head["margin_over_other_blocks"] == pytest.approx(full["pearson_mean"] - blocks["pearson_mean"])
    rob = run.result.robustness.set_index(["condition", "fusion"])
    assert head["mixed_damage_delta_pearson_average"] == pytest.approx(rob.loc[("mixed", "average"), "delta_pearson"])
    mixed = rob.loc[("mixed", "quality"), "loss_avoided"]
    assert head["mixed_damage_loss_avoided"] == (None if math.isnan(mixed) else pytest.approx(mixed))


def test_scores_file_has_finite_scores_per_split_and_a_ceiling(run):
    metrics = json.loads((run.reports / "scores.json").read_text())
    assert metrics == run.result.metrics
    for split in ("valid", "test"):  # tiny's test split is labelled
        assert {"pearson_mean", "mse", "n", *[f"pearson_{e}" for e in EMOTIONS]} <= set(metrics[split])
        assert all(math.isfinite(v) for v in metrics[split].values())
        assert -1 <= metrics[split]["pearson_mean"] <= 1 and metrics[split]["mse"] >= 0
        assert -1 <= metrics["ceiling"][split]["pearson_mean"] <= 1
    # the embedded dataset's ceiling on valid is positive, so its fraction must be reported (and right)
    assert metrics["ceiling"]["valid"]["pearson_mean"] > 0
    assert "valid" in metrics["fraction_of_ceiling"]
    assert metrics["fraction_of_ceiling"]["valid"] == pytest.approx(
        metrics["valid"]["pearson_mean"] / metrics["ceiling"]["valid"]["pearson_mean"])


def test_saved_model_rerun_gives_the_stage2_predictions(run):
    """evaluate re-runs models/stage2/model.pt: its numbers are the ones stage2 wrote next to it."""
    stored = pd.read_csv(run.layout.stage2 / "predictions.csv", dtype={"id": str})
    scatter = pd.read_csv(run.reports / "plots" / "scatter.csv", dtype={"id": str})
    valid = stored[stored.split == "valid"]
    assert len(valid) and set(valid.id) == set(scatter[scatter.split == "valid"].id)
    mine = scatter[scatter.split == "valid"].pivot(index="id", columns="emotion", values="predicted")
    np.testing.assert_allclose(mine.loc[valid.id, list(EMOTIONS)].to_numpy(), valid[list(EMOTIONS)].to_numpy(),
                               atol=1e-4)


def test_plot_data_and_figures(run):
    per_dim = pd.read_csv(run.reports / "plots" / "per_dimension.csv")
    assert per_dim["emotion"].tolist() == list(EMOTIONS)
    assert {"pearson_valid", "pearson_test", "ceiling_valid"} <= set(per_dim.columns)
    scatter = pd.read_csv(run.reports / "plots" / "scatter.csv")
    assert list(scatter.columns) == ["id", "split", "emotion", "true", "predicted"]
    weights = pd.read_csv(run.reports / "plots" / "weights.csv")
    assert list(weights.columns) == ["condition", "fusion", "modality", "weight"]
    assert len(weights) == len(CONDITIONS) * len(compared_fusions("quality")) * 3
    for name in ("per_dimension", "scatter", "weights"):
        png = run.reports / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_reads_as_a_summary(run):
    report = (run.reports / "report.md").read_text()
    valid = run.result.metrics["valid"]["pearson_mean"]
    assert f"mean Pearson **{valid:.4f}**" in report
    assert "oracle ceiling" in report
    assert "| V+A+T | average |" in report  # the ablation table, included
    assert "none: all encoders pretrained" in report and "extract.visual" in report
    assert "missing_audio" in report and "](figures/weights.png)" in report and "](figures/scatter.png)" in report
    assert "Stage I" in report and "a2t" in report
    assert "| mixed | quality |" in report and "loss avoided" in report and "### Quality vs average fusion" in report
    assert "linear probe" in report.split("## Per dimension")[0]  # headline: the network's margin over it
    assert "## Probes: where information is lost" in report and "| face_smile |" in report
    assert "Mean ± sd" not in report.split("## Ablation")[1].split("## Robustness")[0]  # tiny: one seed
    assert run.result.data_fingerprint in report
    assert "registry" not in report.lower()  # registration is a later step: not part of evaluate's outputs


def test_probe_table_and_per_seed_robustness_rows(run):
    """probe.csv: R^2 on valid per rendered control and modality; robustness_seeds.csv: one row per training seed."""
    probe = pd.read_csv(run.reports / "probe.csv")
    assert list(probe.columns) == ["control", "V", "A", "T", "VAT"]
    assert {"face_smile", "face_brow_raise", "pitch", "rate"} <= set(probe["control"])
    assert (probe[["V", "A", "T", "VAT"]].to_numpy() <= 1).all()
    seeds = pd.read_csv(run.reports / "robustness_seeds.csv")
    assert len(seeds) == len(CONDITIONS) * len(compared_fusions("quality")) * run.params.evaluate.seeds
    mixed = seeds[(seeds.condition == "mixed")]
    assert (mixed["n_damaged"] == round(run.params.evaluate.robustness.mixed_rate * mixed["n"])).all()
    robust = json.loads((run.reports / "robustness.json").read_text())
    assert {"pearson_mean", "pearson_mean_sd", "loss_avoided", "weight_damaged"} <= set(robust["mixed/quality"])
    assert any(k.startswith("mixed_weights/") for k in robust)


def test_registration_is_its_own_step_and_registers_a_model_once(run):
    """evaluate writes no registry record; `emi registry register` registers the pipeline's model and, for the same
    model files, does nothing more than say which version they are."""
    from emi.tracking.registry import register_outputs

    first = run.registered
    assert first["new"] and first["model"] == run.params.tracking.registered_model
    assert not (run.reports / "registry.json").exists()
    again = register_outputs(run.params, run.layout)
    assert not again["new"] and again["version"] == first["version"]


def test_evaluate_trains_nothing_and_names_the_stage_that_makes_a_missing_model(run, tmp_path):
    """The robustness comparison reads the ablation stage's models: without them evaluate stops in one line naming
    `emi ablate`; with them it uses those very files."""
    params, src = run.params, run.layout
    layout = link_layout(src, tmp_path / "root", "raw", "transcripts", "features", "aligned", "stage1", "augmented",
                         "stage2")
    with pytest.raises(RobustnessError) as err:
        evaluate(params, layout, show_progress=False)
    message = str(err.value)
    assert "\n" not in message and "emi ablate" in message and "VAT-average-both.pt" in message
    layout = link_layout(src, tmp_path / "with", "raw", "transcripts", "features", "aligned", "stage1", "augmented",
                         "stage2", "ablation_models")
    result = evaluate(params, layout, show_progress=False)
    assert str(layout.ablation_models / "VAT-average-both.pt") in (layout.reports / "report.md").read_text()
    # the same models, so the same table; not to the last bits: the session's pipeline may have been evaluated in
    # another process, after every other stage ran in it (that history moves a ratio like loss_avoided by ~1e-5;
    # two fresh processes agree bit for bit, as the DVC stages do), while other models would move it by far more
    pd.testing.assert_frame_equal(result.robustness, run.result.robustness, check_exact=False, atol=1e-4)
    with pytest.raises(EvaluateError, match=r"not found; the stage1 stage makes it \(`emi stage1`"):
        evaluate(params, Layout(tmp_path / "x"), show_progress=False)


def test_tracking_view_is_flat_and_numeric(run):
    m = run.result.flat_metrics()
    assert m == run.result.tracking()["metrics"]
    assert m["valid_pearson_mean"] == run.result.metrics["valid"]["pearson_mean"]
    assert "ceiling_valid_pearson_mean" in m and "robustness_missing_audio_quality_weight_A" in m
    assert all(isinstance(v, int | float) for v in m.values())
    assert all(p.exists() for p in run.result.tracking()["artifacts"])


def test_labelled_data_as_it_ships_train_and_valid_only_evaluates_without_a_test_split(run, tmp_path):
    """Hume-Vidmimic2's labelled release has no test_split.csv: valid is scored, nothing of test is claimed, and
    every output dvc.yaml declares exists (the submission holds the ABAW header alone)."""
    import shutil

    src = run.layout
    layout = link_layout(src, tmp_path / "root", "transcripts", "features", "aligned", "stage1", "stage2",
                         "ablation_models")
    shutil.copytree(src.raw, layout.raw, ignore=shutil.ignore_patterns("test_split.csv"))
    result = evaluate(run.params, layout, show_progress=False)
    assert "valid" in result.metrics and "test" not in result.metrics
    assert "test" not in result.metrics["ceiling"]
    assert (layout.reports / "submission.csv").read_text().strip() == ",".join(
        ["Filename", *EMOTIONS])
    report = (layout.reports / "report.md").read_text()
    assert "no labelled test split" in report and "holds the ABAW header alone" in report
    for name in ("metrics.json", "scores.json", "robustness.json", "robustness.md", "robustness.csv", "report.md",
                 "plots/per_dimension.csv", "plots/scatter.csv", "plots/weights.csv", "figures/weights.png"):
        assert (layout.reports / name).is_file(), name
