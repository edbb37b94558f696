"""Stage I and Stage II on real extracted features of the tiny dataset: outputs, determinism, resume, SGDR, EMA."""

import numpy as np
import pandas as pd
import pytest
import torch

import emi.stage2 as stage2_mod
from emi.config import EMOTIONS, load_params
from emi.extract import extract
from emi.stage1 import load_aligned, stage1
from emi.stage2 import ablation, load_model, predict, split_data, stage2, train_model
from emi.train import sgdr
from tests.test_extract import transcripts_from_script


def tiny(*overrides: str):
    return load_params(None, overrides=list(overrides), profile="tiny")


@pytest.fixture(scope="module")
def features(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tr = transcripts_from_script(tiny_dataset, root / "tr.csv")
    extract(tiny(), tiny_dataset, tr, root / "features", None, show_progress=False)
    return root / "features"


@pytest.fixture(scope="module")
def aligned(features, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    result = stage1(tiny(), features, root / "model", root / "aligned", show_progress=False)
    assert result.model_path.is_file()
    return result


def test_stage1_writes_aligned_sequences_and_retrieval_metrics(aligned):
    embed = tiny().stage1.embed_dim
    data, splits = load_aligned(aligned.aligned_path, "aligned")
    assert len(data) == 12 and set(splits) == {"train", "valid", "test"}
    assert all(v.shape[1] == embed and a.shape == v.shape for v, a in zip(data.visual, data.audio))
    assert data.text.shape == (12, embed)
    both, _ = load_aligned(aligned.aligned_path, "both")
    assert both.visual[0].shape[1] == embed + 519 and both.text.shape == (12, embed + 384)
    train = np.concatenate([v[:, embed:] for v, s in zip(both.visual, splits) if s == "train"])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)  # encoder view standardized on the train split
    assert {"v2t_recall@1", "a2t_recall@1", "v2t_chance@1"} <= set(aligned.metrics)


def test_stage1_excludes_clips_without_text_from_pairs(features, tmp_path):
    # the same run with every transcript unusable: no pairs, so nothing to learn, but no crash and no NaN
    from emi.stage1 import _pair_masks, feature_data

    data, _, _ = feature_data(features)
    data.mask[:, 2] = False
    vt, at = _pair_masks(data.batch(list(range(len(data)))))
    assert not vt.any() and not at.any()


def test_sgdr_schedule_matches_the_paper():
    p = load_params(None, profile="paper").stage2.schedule
    assert (p.lr_max, p.lr_min, p.cycle_epochs, p.epochs) == (1e-5, 1e-7, 10, 50)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=p.lr_max)
    sched = sgdr(opt, p)
    lrs = []
    for _ in range(p.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[10] == pytest.approx(1e-5) and lrs[40] == pytest.approx(1e-5)
    assert lrs[5] == pytest.approx((1e-5 + 1e-7) / 2)  # half-way down the cosine
    assert min(lrs) > 1e-7 and lrs[9] < 1e-6


def test_stage2_trains_saves_ema_and_predicts_in_range(aligned, tiny_dataset, tmp_path):
    result = stage2(tiny(), aligned.aligned_path, tiny_dataset, tmp_path / "m", show_progress=False)
    pred = result.predictions
    values = pred[list(EMOTIONS)].to_numpy()
    assert len(pred) == 12 and ((values >= 0) & (values <= 1)).all()
    assert np.allclose(pred[["weight_V", "weight_A", "weight_T"]].sum(axis=1), 1, atol=1e-5)
    assert np.isfinite(result.metrics["valid_pearson_mean"])
    # the saved model is the EMA one: reloading it reproduces the predictions
    model = load_model(result.model_path)
    parts = split_data(aligned.aligned_path, tiny_dataset, tiny().stage2.inputs)
    again, _ = predict(model, parts["valid"], 4)
    valid = pred[pred["split"] == "valid"]
    np.testing.assert_allclose(again, valid[list(EMOTIONS)].to_numpy(), atol=1e-5)


def test_ema_weights_differ_from_raw_and_are_what_is_evaluated(aligned, tiny_dataset):
    p = tiny().stage2
    parts = split_data(aligned.aligned_path, tiny_dataset, tiny().stage2.inputs)
    ema_model, history, _ = train_model(p, 1, parts["train"], parts["valid"], None, log_epochs=False)
    raw_model, _, _ = train_model(p.model_copy(update={"ema_decay": 1e-6}), 1, parts["train"], parts["valid"],
                                  None, log_epochs=False)  # decay ~0: the EMA equals the raw weights
    a = torch.nn.utils.parameters_to_vector(ema_model.parameters())
    b = torch.nn.utils.parameters_to_vector(raw_model.parameters())
    assert not torch.allclose(a, b)
    last = stage2_mod.evaluate(ema_model, parts["valid"], 4)["pearson_mean"]
    assert history[-1]["valid_pearson_mean"] == pytest.approx(last)


def test_same_seed_same_metrics_other_seed_differs(aligned, tiny_dataset, tmp_path):
    one = stage2(tiny(), aligned.aligned_path, tiny_dataset, tmp_path / "a", show_progress=False).metrics
    two = stage2(tiny(), aligned.aligned_path, tiny_dataset, tmp_path / "b", show_progress=False).metrics
    other = stage2(tiny("seed=5"), aligned.aligned_path, tiny_dataset, tmp_path / "c", show_progress=False).metrics
    assert one == two
    assert one["valid_mse"] != other["valid_mse"]


def test_stage2_resumes_after_a_crash_to_the_same_result(aligned, tiny_dataset, tmp_path, monkeypatch):
    params = tiny("stage2.schedule.epochs=4")
    clean = stage2(params, aligned.aligned_path, tiny_dataset, tmp_path / "clean", show_progress=False)

    real_save, calls = stage2_mod.save_checkpoint, []

    def crash_after_two_epochs(path, state):
        calls.append(state["epoch"])
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(stage2_mod, "save_checkpoint", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        stage2(params, aligned.aligned_path, tiny_dataset, tmp_path / "crash", show_progress=False)
    monkeypatch.setattr(stage2_mod, "save_checkpoint", real_save)
    resumed = stage2(params, aligned.aligned_path, tiny_dataset, tmp_path / "crash", show_progress=False)
    assert resumed.epochs_run == 2  # epochs 3 and 4 only
    assert resumed.metrics == clean.metrics


def test_ablation_grid_writes_one_table_and_reuses_the_stage2_model(aligned, tiny_dataset, tmp_path):
    trained = stage2(tiny(), aligned.aligned_path, tiny_dataset, tmp_path / "stage2", show_progress=False)
    table = ablation(tiny(), aligned.aligned_path, tiny_dataset, tmp_path, modality_sets=("V", "VAT"),
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
