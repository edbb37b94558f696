"""`emi predict` from the model registry on generated clips: the numbers `evaluate` reported, and masked modalities.

The whole tiny pipeline runs for real here (whisper ASR included), against an MLflow store in a temp folder.
"""

import json
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from emi.config import EMOTIONS, load_params
from emi.evaluate import evaluate
from emi.extract import extract
from emi.media import write_mp4
from emi.stage1 import stage1
from emi.stage2 import stage2
from emi.tracking import compare_versions, publish
from emi.transcribe import transcribe
from tests.conftest import EMI


@pytest.fixture(scope="module")
def pipeline(tiny_dataset, tmp_path_factory, mlflow_store):
    root = tmp_path_factory.mktemp("predict")
    params = load_params(None, profile="tiny", overrides=[f"tracking.uri={mlflow_store}",
                                                          "tracking.registered_model=emi-fusion-predict-test"])
    tr = transcribe(params, tiny_dataset, root / "transcripts", None, show_progress=False)
    extract(params, tiny_dataset, tr.table, root / "features", None, show_progress=False)
    s1 = stage1(params, root / "features", root / "models/stage1", root / "aligned", show_progress=False)
    stage2(params, s1.aligned_path, tiny_dataset, root / "models/stage2", show_progress=False)
    result = evaluate(params, tiny_dataset, tr.table, s1.aligned_path, root / "models/stage1", root / "models/stage2",
                      root / "reports", show_progress=False, features_dir=root / "features")
    decision = publish(params, root / "models/stage1/alignment.pt", root / "models/stage2/model.pt",
                       result.tracking()["metrics"], result.data_fingerprint, root / "reports/registry.json")
    return SimpleNamespace(params=params, root=root, raw=tiny_dataset, decision=decision, result=result)


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EMI, "predict", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_from_the_champion_matches_evaluate(pipeline, tmp_path):
    name = pipeline.params.tracking.registered_model
    scatter = pd.read_csv(pipeline.root / "reports/plots/scatter.csv", dtype={"id": str})
    clip = sorted(scatter[scatter.split == "valid"].id)[0]
    out = tmp_path / "pred.csv"
    done = run_predict(str(pipeline.raw / "raw" / f"{clip}.mp4"), "--model", f"models:/{name}@champion",
                       "--out", str(out))
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(out).iloc[0]
    values = row[list(EMOTIONS)].to_numpy(float)
    assert ((values >= 0) & (values <= 1)).all()
    reported = scatter[(scatter.id == clip)].set_index("emotion")["predicted"]
    np.testing.assert_allclose(values, reported.loc[list(EMOTIONS)].to_numpy(float), atol=1e-4)
    assert row[["weight_V", "weight_A", "weight_T"]].sum() == pytest.approx(1, abs=1e-5)


@pytest.mark.slow
def test_video_without_audio_predicts_with_audio_weight_zero(pipeline, tmp_path):
    rng = np.random.default_rng(0)
    video = tmp_path / "silent_film.mp4"
    write_mp4(video, [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(60)], 25, None, 22050)
    out = tmp_path / "pred.csv"
    done = run_predict(str(video), "--model", str(pipeline.root / "models"), "--profile", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert row["weight_A"] == 0 and row["weight_T"] == 0  # no audio, so no speech either
    assert row["weight_V"] == pytest.approx(1)
    assert np.isfinite(row[list(EMOTIONS)].to_numpy(float)).all()
    assert "no usable audio" in row["warning"]


@pytest.mark.slow
def test_unreadable_file_is_named(tmp_path, pipeline):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    done = run_predict(str(bad), "--model", str(pipeline.root / "models"), "--profile", "tiny")
    assert done.returncode == 1 and "broken.mp4" in done.stderr and "not a readable video" in done.stderr


@pytest.mark.slow
def test_second_run_with_changed_stage2_param_is_a_second_version(pipeline, tmp_path):
    params = load_params(None, profile="tiny", overrides=[
        f"tracking.uri={pipeline.params.tracking.uri}", "stage2.width=64",
        f"tracking.registered_model={pipeline.params.tracking.registered_model}"])
    root = pipeline.root
    stage2(params, root / "aligned/aligned.npz", pipeline.raw, tmp_path / "stage2", show_progress=False)
    result = evaluate(params, pipeline.raw, root / "transcripts/transcripts.csv", root / "aligned/aligned.npz",
                      root / "models/stage1", tmp_path / "stage2", tmp_path / "reports", show_progress=False,
                      features_dir=root / "features")
    second = publish(params, root / "models/stage1/alignment.pt", tmp_path / "stage2/model.pt",
                     result.tracking()["metrics"], result.data_fingerprint)
    assert int(second["version"]) == int(pipeline.decision["version"]) + 1
    table = compare_versions(params)
    assert f"{pipeline.decision['version']}" in table and second["version"] in table
    assert "stage2.width" in table
    registry = json.loads((root / "reports/registry.json").read_text())
    assert registry["promoted"] is True and registry["model"] == params.tracking.registered_model
