"""`emi evaluate` on a real tiny pipeline (generated clips -> transcripts -> features -> Stage I -> Stage II ->
ablation -> evaluate, laid out as emi.paths.Layout expects): the files a user and DVC read, the report, and the
robustness comparison's average-fusion model."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from emi.config import EMOTIONS
from emi.paths import Layout
from emi.evaluation.robustness import CONDITIONS, COMPARED_FUSIONS
from emi.stages.evaluate import EvaluateError, evaluate
from emi.train.fusion import dims_of, save_model, split_data, train_model, variant_name, with_copies
from emi.utils import fingerprint
from tests.conftest import link_layout

pytestmark = pytest.mark.slow  # every test here reads the tiny pipeline, built once per session


@pytest.fixture(scope="module")
def run(tiny_pipeline):
    return tiny_pipeline


def test_dvc_metrics_file_is_a_headline_and_the_scores_file_has_every_dimension(run):
    """`dvc exp show` makes a column of every metric: metrics.json holds the few numbers runs are compared by."""
    head = json.loads((run.reports / "metrics.json").read_text())
    scores_ = run.result.metrics
    assert set(head) == {"valid_pearson_mean", "valid_mse", "test_pearson_mean", "test_mse",
                         "valid_fraction_of_ceiling", "test_fraction_of_ceiling",
                         "robustness_quality_mean_delta_pearson", "robustness_average_mean_delta_pearson",
                         "robustness_mixed_loss_avoided"}
    assert head["valid_pearson_mean"] == scores_["valid"]["pearson_mean"] and head["test_mse"] == scores_["test"]["mse"]
    rob = run.result.robustness
    damaged = rob[(rob.condition != "clean") & (rob.fusion == "quality")]
    assert head["robustness_quality_mean_delta_pearson"] == pytest.approx(damaged["delta_pearson"].mean())
    assert len(damaged) == len(CONDITIONS) - 1  # every damage kind and the mixed condition
    mixed = rob[(rob.condition == "mixed") & (rob.fusion == "quality")]["loss_avoided"].item()
    assert head["robustness_mixed_loss_avoided"] == (None if math.isnan(mixed) else pytest.approx(mixed))


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
    assert len(weights) == len(CONDITIONS) * len(COMPARED_FUSIONS) * 3
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
    assert run.result.params_fingerprint == fingerprint(run.params.model_dump(mode="json"))
    assert run.result.data_fingerprint in report and run.params.profile in report


def test_probe_table_and_per_seed_robustness_rows(run):
    """probe.csv: R^2 on valid per rendered control and modality; robustness_seeds.csv: one row per training seed."""
    probe = pd.read_csv(run.reports / "probe.csv")
    assert list(probe.columns) == ["control", "V", "A", "T", "VAT"]
    assert {"face_smile", "face_brow_raise", "pitch", "rate"} <= set(probe["control"])
    assert (probe[["V", "A", "T", "VAT"]].to_numpy() <= 1).all()
    seeds = pd.read_csv(run.reports / "robustness_seeds.csv")
    assert len(seeds) == len(CONDITIONS) * len(COMPARED_FUSIONS) * run.params.evaluate.seeds
    mixed = seeds[(seeds.condition == "mixed")]
    assert (mixed["n_damaged"] == round(run.params.evaluate.robustness.mixed_rate * mixed["n"])).all()
    robust = json.loads((run.reports / "robustness.json").read_text())
    assert {"pearson_mean", "pearson_mean_sd", "loss_avoided", "weight_damaged"} <= set(robust["mixed/quality"])
    assert any(k.startswith("mixed_weights/") for k in robust)


def test_registry_runs_last_and_is_appended_to_the_report(run):
    """register=True (the default): the model is registered once every output is written, and report.md says so."""
    decision = run.result.registry
    assert decision is not None and decision["model"] == run.params.tracking.registered_model
    assert json.loads((run.reports / "registry.json").read_text())["version"] == decision["version"]
    report = (run.reports / "report.md").read_text()
    assert report.index("## Provenance") < report.index("## Model registry")
    assert f"`{decision['model']}` version {decision['version']}" in report


def test_given_average_model_is_used_instead_of_training_one(run, tmp_path):
    params, src = run.params, run.layout
    parts = split_data(src.aligned_file, src.raw, params.stage2.inputs)
    p = params.stage2.model_copy(update={"fusion": "average"})
    train = with_copies(parts["train"], src.augmented_file, p.inputs)  # as evaluate trains it: copies included
    model, _, _ = train_model(p, params.seed, train, parts["valid"], None, log_epochs=False)
    # the same pipeline, plus the ablation stage's V+A+T average-fusion model where evaluate looks for it
    layout = link_layout(src, tmp_path / "root", "raw", "transcripts", "features", "aligned", "stage1", "augmented",
                         "stage2")
    path = layout.ablation_models / f"{variant_name('VAT', 'average', params.stage2.inputs)}.pt"
    path.parent.mkdir(parents=True)
    save_model(path, model, p, dims_of(parts["train"]))
    result = evaluate(params, layout, register=False, show_progress=False)
    assert str(path) in (layout.reports / "report.md").read_text()
    assert result.registry is None and not (layout.reports / "registry.json").exists()
    # same training recipe and seed as the one trained on the spot: the same table
    pd.testing.assert_frame_equal(result.robustness, run.result.robustness, atol=1e-5)
    with pytest.raises(EvaluateError, match="not found"):
        evaluate(params, Layout(tmp_path / "x"), register=False, show_progress=False)
    assert torch.load(path, weights_only=True)["params"]["fusion"] == "average"


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
    layout = link_layout(src, tmp_path / "root", "transcripts", "features", "aligned", "stage1", "stage2")
    shutil.copytree(src.raw, layout.raw, ignore=shutil.ignore_patterns("test_split.csv"))
    result = evaluate(run.params, layout, register=False, show_progress=False)
    assert "valid" in result.metrics and "test" not in result.metrics
    assert "test" not in result.metrics["ceiling"]
    assert (layout.reports / "submission.csv").read_text().strip() == ",".join(
        ["Filename", *EMOTIONS])
    report = (layout.reports / "report.md").read_text()
    assert "no labelled test split" in report and "holds the ABAW header alone" in report
    for name in ("metrics.json", "scores.json", "robustness.json", "robustness.md", "robustness.csv", "report.md",
                 "plots/per_dimension.csv", "plots/scatter.csv", "plots/weights.csv", "figures/weights.png"):
        assert (layout.reports / name).is_file(), name
