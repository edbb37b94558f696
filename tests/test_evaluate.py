"""`emi evaluate` on a real tiny pipeline (generated clips -> features -> Stage I -> Stage II): the files a user and
DVC read, the ABAW submission, and the robustness table."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from emi.config import EMOTIONS, SPLIT_HEADER, load_params
from emi.encoders import resolve_device, resolve_dtype
from emi.evaluate import (CONDITIONS, FUSIONS, EvaluateError, condition_features, conditions, damaged_rows, evaluate,
                          submission)
from emi.extract import _read_transcripts, extract, list_clips, load_encoders
from emi.infer import clip_features
from emi.stage1 import stage1
from emi.stage2 import ablation, save_model, split_data, stage2, train_model
from emi.utils import fingerprint
from tests.test_extract import transcripts_from_script


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params = load_params(None, profile="tiny")
    tr = transcripts_from_script(tiny_dataset, root / "transcripts.csv")
    extract(params, tiny_dataset, tr, root / "features", None, show_progress=False)
    s1 = stage1(params, root / "features", root / "models" / "stage1", root / "aligned", show_progress=False)
    stage2(params, s1.aligned_path, tiny_dataset, root / "models" / "stage2", show_progress=False)
    reports = root / "reports"
    ablation(params, s1.aligned_path, tiny_dataset, reports, modality_sets=("VAT",), fusions=("quality", "average"),
             inputs=(params.stage2.inputs,))
    result = evaluate(params, tiny_dataset, tr, s1.aligned_path, root / "models" / "stage1", root / "models" / "stage2",
                      reports, show_progress=False, features_dir=root / "features")
    return SimpleNamespace(params=params, raw=tiny_dataset, tr=tr, aligned=s1.aligned_path, root=root, reports=reports,
                           result=result)


def test_metrics_file_has_finite_scores_per_split_and_a_ceiling(run):
    metrics = json.loads((run.reports / "metrics.json").read_text())
    assert metrics == run.result.metrics
    for split in ("valid", "test"):  # tiny's test split is labelled
        assert {"pearson_mean", "mse", "n", *[f"pearson_{e}" for e in EMOTIONS]} <= set(metrics[split])
        assert all(math.isfinite(v) for v in metrics[split].values())
        assert -1 <= metrics[split]["pearson_mean"] <= 1 and metrics[split]["mse"] >= 0
        assert -1 <= metrics["ceiling"][split]["pearson_mean"] <= 1
    if "valid" in metrics["fraction_of_ceiling"]:
        assert metrics["fraction_of_ceiling"]["valid"] == pytest.approx(
            metrics["valid"]["pearson_mean"] / metrics["ceiling"]["valid"]["pearson_mean"])


def test_saved_model_rerun_gives_the_stage2_predictions(run):
    """evaluate re-runs models/stage2/model.pt: its numbers are the ones stage2 wrote next to it."""
    stored = pd.read_csv(run.root / "models" / "stage2" / "predictions.csv", dtype={"id": str})
    scatter = pd.read_csv(run.reports / "plots" / "scatter.csv", dtype={"id": str})
    valid = stored[stored.split == "valid"]
    assert len(valid) and set(valid.id) == set(scatter[scatter.split == "valid"].id)
    mine = scatter[scatter.split == "valid"].pivot(index="id", columns="emotion", values="predicted")
    np.testing.assert_allclose(mine.loc[valid.id, list(EMOTIONS)].to_numpy(), valid[list(EMOTIONS)].to_numpy(),
                               atol=1e-4)


def test_submission_is_abaw_format_in_test_split_order(run):
    text = (run.reports / "submission.csv").read_text()
    assert text.splitlines()[0] == ",".join(SPLIT_HEADER)
    sub = pd.read_csv(run.reports / "submission.csv", dtype={"Filename": str})
    order = pd.read_csv(run.raw / "test_split.csv", dtype={"Filename": str})["Filename"].tolist()
    assert sub["Filename"].tolist() == order
    values = sub[list(EMOTIONS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    assert all(len(cell.split(".")[1]) == 6 for cell in text.splitlines()[1].split(",")[1:])
    assert run.result.submission_filled == []


def test_test_clip_without_prediction_fails_beyond_tolerance_and_is_filled_within(run):
    ids = ["001", "002", "003", "004"]
    predicted = pd.DataFrame(np.full((3, 6), 0.25), index=ids[:3], columns=list(EMOTIONS))
    fill = np.full(6, 0.5)
    with pytest.raises(EvaluateError, match="004"):
        submission(ids, predicted, fill, max_error_fraction=0.0)
    table, filled = submission(ids, predicted, fill, max_error_fraction=0.25)
    assert filled == ["004"] and table["Filename"].tolist() == ids
    np.testing.assert_allclose(table.iloc[3][list(EMOTIONS)].to_numpy(float), fill)


def test_robustness_table_covers_every_condition_and_fusion(run):
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


def test_fast_damage_path_matches_clip_features(run):
    """Decoding once and re-encoding only the damaged modality gives what clip_features gives for damaged clips."""
    params = run.params
    parts = split_data(run.aligned, run.raw, params.stage2.inputs)
    by_id = {c.id: c for c in list_clips(run.raw)}
    clips = [by_id[i] for i in parts["valid"].ids]
    texts = _read_transcripts(run.tr)
    device = resolve_device(params.extract.device)
    encoders = load_encoders(params.extract, device, resolve_dtype(params.extract.dtype, device),
                             {"visual", "audio", "text"})
    damages = conditions(params.evaluate.robustness)
    rows = damaged_rows(len(clips), 0.5, params.seed)
    assert 0 < len(rows) < len(clips)
    fast = condition_features(params, clips, texts, encoders, damages, rows, params.seed)
    clean = clip_features(params, clips, texts, encoders, None, params.seed).data
    for name, damage in damages.items():
        ref = clip_features(params, [clips[i] for i in rows], texts, encoders, damage, params.seed).data if damage else None
        for i in range(len(clips)):
            want, j = (ref, list(rows).index(i)) if damage and i in rows else (clean, i)
            got = fast[name]
            np.testing.assert_allclose(got.visual[i], want.visual[j], atol=1e-5, err_msg=f"{name} V {i}")
            np.testing.assert_allclose(got.audio[i], want.audio[j], atol=1e-5, err_msg=f"{name} A {i}")
            np.testing.assert_allclose(got.text[i], want.text[j], atol=1e-5, err_msg=f"{name} T {i}")
            assert (got.mask[i] == want.mask[j]).all(), name


def test_plot_data_and_figures(run):
    per_dim = pd.read_csv(run.reports / "plots" / "per_dimension.csv")
    assert per_dim["emotion"].tolist() == list(EMOTIONS)
    assert {"pearson_valid", "pearson_test", "ceiling_valid"} <= set(per_dim.columns)
    scatter = pd.read_csv(run.reports / "plots" / "scatter.csv")
    assert list(scatter.columns) == ["id", "split", "emotion", "true", "predicted"]
    weights = pd.read_csv(run.reports / "plots" / "weights.csv")
    assert list(weights.columns) == ["condition", "fusion", "modality", "weight"]
    assert len(weights) == len(CONDITIONS) * len(FUSIONS) * 3
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
    assert run.result.params_fingerprint == fingerprint(run.params.model_dump(mode="json"))
    assert run.result.data_fingerprint in report and run.params.profile in report


def test_given_average_model_is_used_instead_of_training_one(run, tmp_path):
    params = run.params
    parts = split_data(run.aligned, run.raw, params.stage2.inputs)
    p = params.stage2.model_copy(update={"fusion": "average"})
    model, _, _ = train_model(p, params.seed, parts["train"], parts["valid"], None, log_epochs=False)
    path = tmp_path / "average.pt"
    save_model(path, model, p, {"V": parts["train"].visual[0].shape[1], "A": parts["train"].audio[0].shape[1],
                                "T": parts["train"].text.shape[1]})
    out = tmp_path / "reports"
    result = evaluate(params, run.raw, run.tr, run.aligned, run.root / "models" / "stage1", run.root / "models" / "stage2",
                      out, ablation_dir=run.reports, average_model=path, show_progress=False,
                      features_dir=run.root / "features")
    assert str(path) in (out / "report.md").read_text()
    # same training recipe and seed as the one trained on the spot: the same table
    pd.testing.assert_frame_equal(result.robustness, run.result.robustness, atol=1e-5)
    with pytest.raises(EvaluateError, match="not found"):
        evaluate(params, run.raw, run.tr, run.aligned, run.root / "models" / "stage1", run.root / "models" / "stage2",
                 tmp_path / "x", average_model=tmp_path / "nope.pt", show_progress=False)
    assert torch.load(path, weights_only=True)["params"]["fusion"] == "average"


def test_tracking_view_is_flat_and_numeric(run):
    info = run.result.tracking()
    m = info["metrics"]
    assert m["valid_pearson_mean"] == run.result.metrics["valid"]["pearson_mean"]
    assert "ceiling_valid_pearson_mean" in m and "robustness_missing_audio_quality_weight_A" in m
    assert all(isinstance(v, int | float) for v in m.values())
    assert all(p.exists() for p in info["artifacts"])
