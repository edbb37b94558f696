"""Stage II: training with EMA, predicting, scoring, saving and loading, the labelled splits."""

import numpy as np
import pandas as pd
import pytest
import torch

from emi.config import EMOTIONS
from emi.metrics import scores
from emi.model import AlignmentModel
from emi.train.alignment import feature_norm
from emi.train.projection import write_aligned
from emi.train.fusion import (dims_of, score_model, load_fusion, load_model, predict, prediction_frame,
                              prediction_table, save_model, split_data, train_model)
from emi.data.sequences import SequenceData
from tests.conftest import tiny

DIMS = {"V": 12, "A": 10, "T": 8}
CUE_DIMS = {"cues_V": 5, "cues_A": 3}




def clips(n: int, seed: int, labels: bool = True) -> SequenceData:
    """Stage-II inputs of ``n`` clips whose labels follow their features (something to learn)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 7, n)
    visual = [rng.standard_normal((L, DIMS["V"])).astype(np.float32) for L in lengths]
    audio = [rng.standard_normal((L, DIMS["A"])).astype(np.float32) for L in lengths]
    text = rng.standard_normal((n, DIMS["T"])).astype(np.float32)
    y = 1 / (1 + np.exp(-np.stack([v.mean(0)[:6] for v in visual]) - text[:, :6]))
    mask = np.ones((n, 3), bool)
    mask[0, 1] = False  # one clip without audio
    cues = {m: [rng.random((L, CUE_DIMS[f"cues_{k}"]), dtype=np.float32) for L in lengths]
            for m, k in (("visual", "V"), ("audio", "A"))}
    return SequenceData([f"{seed}{i:04d}" for i in range(n)], visual, audio, text, mask,
                        y.astype(np.float32) if labels else None, cues)


@pytest.fixture(scope="module")
def trained():
    train, valid = clips(16, 1), clips(6, 2)
    model, history, ran = train_model(tiny().stage2, 1, train, valid, None, log_epochs=False)
    return model, history, ran, train, valid


def test_ema_weights_differ_from_raw_and_are_what_is_evaluated(trained):
    ema_model, history, _, train, valid = trained
    p = tiny().stage2
    raw_model, _, _ = train_model(p.model_copy(update={"ema_decay": 1e-6}), 1, train, valid, None,
                                  log_epochs=False)  # decay ~0: the EMA equals the raw weights
    a = torch.nn.utils.parameters_to_vector(ema_model.parameters())
    b = torch.nn.utils.parameters_to_vector(raw_model.parameters())
    assert not torch.allclose(a, b)
    last = score_model(ema_model, valid, 4)["pearson_mean"]
    assert history[-1]["valid_pearson_mean"] == pytest.approx(last)


def test_training_is_seeded_and_reports_every_epoch(trained):
    _, history, ran, train, valid = trained
    assert ran == tiny().stage2.schedule.epochs == len(history)
    assert [h["epoch"] for h in history] == list(range(1, ran + 1))
    assert all(np.isfinite(h["train_loss"]) for h in history)
    one_epoch = tiny("stage2.schedule.epochs=1").stage2
    first, second, other = (train_model(one_epoch, seed, train.subset(range(8)), valid, None, log_epochs=False)[0]
                            for seed in (1, 1, 2))
    vec = torch.nn.utils.parameters_to_vector
    assert torch.equal(vec(first.parameters()), vec(second.parameters())), "same seed, same model"
    assert not torch.equal(vec(first.parameters()), vec(other.parameters()))


def test_a_length_in_steps_is_that_many_updates_whatever_the_data_size(tmp_path):
    """``schedule.steps``: the training stops after that many optimizer steps (the last epoch cut short) and SGDR
    restarts every ``cycle_steps`` steps; the same budget over twice the clips is half the epochs."""
    import math

    per_step = tiny("stage2.schedule.epochs=null", "stage2.schedule.cycle_epochs=null", "stage2.schedule.steps=10",
                    "stage2.schedule.cycle_steps=3").stage2  # batch_size 4
    train, valid = clips(16, 1), clips(6, 2)
    _, history, ran = train_model(per_step, 1, train, valid, tmp_path / "ckpt.pt", log_epochs=False)
    assert ran == len(history) == 3  # 4 + 4 + 2 steps
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 10 and state["scheduler"]["T_0"] == 3
    s = per_step.schedule
    cosine = lambda t: s.lr_min + (s.lr_max - s.lr_min) * (1 + math.cos(math.pi * (t % 3) / 3)) / 2
    assert [h["lr"] for h in history] == pytest.approx([cosine(0), cosine(4), cosine(8)])  # each epoch's first step
    _, longer, _ = train_model(per_step, 1, clips(32, 3), valid, None, log_epochs=False)
    assert len(longer) == 2  # 8 + 2 steps
    assert s.epochs_for(4) == 3 and s.as_epochs(6).cycle_epochs == 2 and s.as_epochs(6).steps is None
    with pytest.raises(ValueError, match="one of schedule.epochs and schedule.steps"):
        tiny("stage2.schedule.steps=10", "stage2.schedule.cycle_steps=3")


def test_predictions_are_intensities_with_fusion_weights_and_score_like_metrics(trained):
    model, _, _, _, valid = trained
    pred, weights = predict(model, valid, 4)
    assert pred.shape == (6, 6) and weights.shape == (6, 3)
    assert ((pred >= 0) & (pred <= 1)).all()
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-5)
    assert weights[0, 1] == 0, "the clip without audio must give audio no weight"
    assert score_model(model, valid, 4) == scores(pred, valid.labels)
    assert predict(model, valid.subset([]), 4)[0].shape == (0, 6)
    frame = prediction_frame(model, valid, 2)
    assert list(frame.columns) == ["id", *EMOTIONS, "weight_V", "weight_A", "weight_T"]
    np.testing.assert_allclose(frame[list(EMOTIONS)].to_numpy(), pred, atol=1e-6)


def test_saved_model_reloads_to_the_same_predictions(trained, tmp_path):
    model, _, _, train, valid = trained
    p = tiny().stage2
    save_model(tmp_path / "model.pt", model, p, dims_of(train))
    assert dims_of(train) == DIMS | CUE_DIMS
    loaded = load_model(tmp_path / "model.pt")
    assert not loaded.training
    np.testing.assert_allclose(predict(loaded, valid, 4)[0], predict(model, valid, 4)[0], atol=1e-6)
    assert load_fusion(tmp_path / "model.pt")[1] == p
    table = prediction_table(loaded, {"train": train, "valid": valid}, 4)
    assert len(table) == 22 and set(table["split"]) == {"train", "valid"}
    assert {f"true_{e}" for e in EMOTIONS} <= set(table.columns)


def test_split_data_labels_train_and_valid_and_keeps_an_unlabelled_test(tmp_path):
    data = clips(6, 3, labels=False)
    splits = ["train", "train", "train", "valid", "test", "test"]
    torch.manual_seed(0)
    aligned = write_aligned(AlignmentModel(DIMS, 4, 0.07), feature_norm(data, range(3)), data, splits,
                            tmp_path / "aligned.npz")
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [[i, *np.round(np.linspace(0, 1, 6), 2)] for i in data.ids[:4]]
    rows[1][2] = "nan"  # an unusable label: that clip is left out of training
    pd.DataFrame(rows[:3], columns=["Filename", *EMOTIONS]).to_csv(raw / "train_split.csv", index=False)
    pd.DataFrame(rows[3:], columns=["Filename", *EMOTIONS]).to_csv(raw / "valid_split.csv", index=False)
    pd.DataFrame({"Filename": data.ids[4:]}).to_csv(raw / "test_split.csv", index=False)
    parts = split_data(aligned, raw, "both")
    assert parts["train"].ids == [data.ids[0], data.ids[2]] and parts["valid"].ids == [data.ids[3]]
    assert parts["train"].labels.shape == (2, 6) and parts["train"].labels[0, 5] == pytest.approx(1.0)
    assert parts["test"].ids == data.ids[4:] and parts["test"].labels is None
    assert parts["train"].visual[0].shape[1] == 4 + DIMS["V"]


def test_a_model_saved_before_the_cues_loads_and_predicts_without_them(trained, tmp_path):
    """Models trained before ``stage2.reliability_cues`` existed (no such key, no cue dims) still load and run."""
    _, _, _, train, valid = trained
    p = tiny("stage2.reliability_cues=false", "stage2.schedule.epochs=1").stage2
    model, _, _ = train_model(p, 1, train.subset(range(4)), valid, None, log_epochs=False)
    params = p.model_dump(mode="json")
    del params["reliability_cues"]
    torch.save({"model": model.state_dict(), "dims": DIMS, "params": params}, tmp_path / "old.pt")
    loaded, saved = load_fusion(tmp_path / "old.pt")
    assert saved.reliability_cues is False and loaded.cue_dims == {}
    np.testing.assert_allclose(predict(loaded, valid, 4)[0], predict(model, valid, 4)[0], atol=1e-6)
    no_cues = valid.subset(range(len(valid)))
    no_cues.cues = None
    np.testing.assert_allclose(predict(loaded, no_cues, 4)[0], predict(model, valid, 4)[0], atol=1e-6)


def test_a_cue_model_refuses_features_without_cues(trained):
    model, _, _, _, valid = trained
    assert model.cue_dims == {"V": 5, "A": 3}
    no_cues = valid.subset(range(len(valid)))
    no_cues.cues = None
    with pytest.raises(ValueError, match="reliability_cues"):
        predict(model, no_cues, 4)
    with pytest.raises(ValueError, match="reliability_cues"):
        train_model(tiny().stage2, 1, no_cues, valid, None, log_epochs=False)


def occlusion_clips(n: int, seed: int, occluded: np.ndarray) -> SequenceData:
    """Clips whose V features tell the labels precisely and A features poorly, except that an occluded clip's V
    features are another face's (the same distribution, so h_V alone cannot tell): only its visual cue
    (dark_fraction, the last of emi.features.cues.VISUAL_CUES) says that the face is covered."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 7, n)
    z = rng.standard_normal((n, 6)).astype(np.float32)
    other = rng.standard_normal((n, 6)).astype(np.float32)

    def steps(latent: np.ndarray, length: int, noise: float) -> np.ndarray:
        return (latent[None] + noise * rng.standard_normal((length, 6))).astype(np.float32)

    visual = [steps(other[i] if occluded[i] else z[i], L, 0.1) for i, L in enumerate(lengths)]
    audio = [steps(z[i], L, 3.0) for i, L in enumerate(lengths)]
    dark = [(0.3 + 0.2 * rng.random((L, 1))) if occ else 0.05 * rng.random((L, 1)) for L, occ in zip(lengths, occluded)]
    cues = {"visual": [np.concatenate([rng.random((L, 4)), d], 1).astype(np.float32) for L, d in zip(lengths, dark)],
            "audio": [rng.random((L, 3), dtype=np.float32) for L in lengths]}
    y = (1 / (1 + np.exp(-z))).astype(np.float32)
    text = np.zeros((n, DIMS["T"]), np.float32)
    return SequenceData([f"{seed}-{i}" for i in range(n)], visual, audio, text, np.ones((n, 3), bool), y, cues)


@pytest.fixture
def one_thread():
    """A model this small trains ~10x faster on one thread than on several contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cues", [True, False])
def test_with_reliability_cues_an_occluded_face_gets_less_visual_weight_than_its_clean_version(cues, one_thread):
    """Issue 15's check: trained on clean clips and occluded copies, the quality scorer gives a fully occluded
    clip less V weight than the same clip clean, when it sees the cues. Without them (the control) it cannot tell
    the two apart: the gap is the cues' doing."""
    train = occlusion_clips(256, 1, np.arange(256) % 2 == 1)
    clean, occluded = (occlusion_clips(16, 2, np.full(16, flag)) for flag in (False, True))
    p = tiny("stage2.modalities=[V,A]", "stage2.width=16", "stage2.lstm_hidden=8", "stage2.transformer_layers=1",
             "stage2.transformer_heads=2", "stage2.dropout=0", "stage2.ema_decay=0.9", "stage2.batch_size=16",
             "stage2.augment.modality_dropout=0", "stage2.schedule.lr_max=0.01", "stage2.schedule.epochs=10",
             "stage2.schedule.cycle_epochs=10", f"stage2.reliability_cues={str(cues).lower()}").stage2
    model, _, _ = train_model(p, 0, train, clean.subset([0, 1]), None, log_epochs=False)
    v_clean, v_occluded = (predict(model, data, 16)[1][:, 0].mean() for data in (clean, occluded))
    if cues:
        assert v_occluded < v_clean - 0.05, (v_clean, v_occluded)
    else:
        assert abs(v_occluded - v_clean) < 0.05, (v_clean, v_occluded)
