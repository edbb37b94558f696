"""``emi stage2`` on real Stage-I features of the tiny dataset: outputs, the EMA model, determinism, resume."""

import numpy as np
import pytest

import emi.train.fusion as fusion_mod
from emi.config import EMOTIONS
from emi.stages.stage2 import stage2
from emi.train.fusion import load_model, predict, split_data
from tests.conftest import tiny

pytestmark = pytest.mark.slow  # extract + Stage I + Stage II end to end


def test_stage2_trains_saves_ema_and_predicts_in_range(tiny_aligned, tiny_dataset, tmp_path):
    result = stage2(tiny(), tiny_aligned.aligned_path, tiny_dataset, tmp_path / "m", show_progress=False)
    pred = result.predictions
    values = pred[list(EMOTIONS)].to_numpy()
    assert len(pred) == 12 and ((values >= 0) & (values <= 1)).all()
    assert np.allclose(pred[["weight_V", "weight_A", "weight_T"]].sum(axis=1), 1, atol=1e-5)
    assert np.isfinite(result.metrics["valid_pearson_mean"])
    # the saved model is the EMA one: reloading it reproduces the predictions
    model = load_model(result.model_path)
    parts = split_data(tiny_aligned.aligned_path, tiny_dataset, tiny().stage2.inputs)
    again, _ = predict(model, parts["valid"], 4)
    valid = pred[pred["split"] == "valid"]
    np.testing.assert_allclose(again, valid[list(EMOTIONS)].to_numpy(), atol=1e-5)


def test_same_seed_same_metrics_other_seed_differs(tiny_aligned, tiny_dataset, tmp_path):
    one = stage2(tiny(), tiny_aligned.aligned_path, tiny_dataset, tmp_path / "a", show_progress=False).metrics
    two = stage2(tiny(), tiny_aligned.aligned_path, tiny_dataset, tmp_path / "b", show_progress=False).metrics
    other = stage2(tiny("seed=5"), tiny_aligned.aligned_path, tiny_dataset, tmp_path / "c", show_progress=False).metrics
    assert one == two
    assert one["valid_mse"] != other["valid_mse"]


def test_stage2_resumes_after_a_crash_to_the_same_result(tiny_aligned, tiny_dataset, tmp_path, monkeypatch):
    params = tiny("stage2.schedule.epochs=4")
    clean = stage2(params, tiny_aligned.aligned_path, tiny_dataset, tmp_path / "clean", show_progress=False)

    real_save, calls = fusion_mod.save_checkpoint, []

    def crash_after_two_epochs(path, state):
        calls.append(state["epoch"])
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(fusion_mod, "save_checkpoint", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        stage2(params, tiny_aligned.aligned_path, tiny_dataset, tmp_path / "crash", show_progress=False)
    monkeypatch.setattr(fusion_mod, "save_checkpoint", real_save)
    resumed = stage2(params, tiny_aligned.aligned_path, tiny_dataset, tmp_path / "crash", show_progress=False)
    assert resumed.epochs_run == 2  # epochs 3 and 4 only
    assert resumed.metrics == clean.metrics
