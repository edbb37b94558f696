"""`emi predict` from the model registry on generated clips: the numbers `evaluate` reported, and masked modalities.

The whole tiny pipeline runs for real here (whisper ASR included; the session's `tiny_pipeline`, registered by its
evaluate stage), against an MLflow store in a temp folder.
"""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from emi.config import EMOTIONS, load_params
from emi.data.media import write_mp4
from emi.stages.evaluate import evaluate
from emi.stages.stage2 import stage2
from emi.tracking.registry import compare_versions
from tests.conftest import EMI, link_layout


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline):
    return tiny_pipeline


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EMI, "predict", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_from_the_champion_matches_evaluate(pipeline, tmp_path):
    name = pipeline.params.tracking.registered_model
    assert pipeline.result.registry["champion_version"] == pipeline.result.registry["version"]
    scatter = pd.read_csv(pipeline.reports / "plots/scatter.csv", dtype={"id": str})
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
    done = run_predict(str(video), "--model", str(pipeline.layout.models), "--profile", "tiny", "--out", str(out))
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert row["weight_A"] == 0 and row["weight_T"] == 0  # no audio, so no speech either
    assert row["weight_V"] == pytest.approx(1)
    assert np.isfinite(row[list(EMOTIONS)].to_numpy(float)).all()
    # the notes name each unusable modality with its status (the wording of emi.featurize.Features.notes)
    assert "no usable audio" in row["warning"] and "audio (no_audio)" in row["warning"]


@pytest.mark.slow
def test_unreadable_file_is_named(tmp_path, pipeline):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    done = run_predict(str(bad), "--model", str(pipeline.layout.models), "--profile", "tiny")
    assert done.returncode == 1 and "broken.mp4" in done.stderr and "not a readable video" in done.stderr


@pytest.mark.slow
def test_second_run_with_changed_stage2_param_is_a_second_version(pipeline, tmp_path):
    params = load_params(None, profile="tiny", overrides=[
        f"tracking.uri={pipeline.params.tracking.uri}", "stage2.width=64",
        f"tracking.registered_model={pipeline.params.tracking.registered_model}"])
    # the same data and Stage I, a Stage II trained with the changed param, evaluated (and registered) again
    layout = link_layout(pipeline.layout, tmp_path / "second", "raw", "transcripts", "features", "aligned", "stage1")
    stage2(params, layout.aligned_file, layout.raw, layout.stage2, show_progress=False)
    second = evaluate(params, layout, register=True, show_progress=False).registry
    first = pipeline.result.registry
    assert int(second["version"]) == int(first["version"]) + 1
    table = compare_versions(params)
    assert f"{first['version']}" in table and second["version"] in table
    assert "stage2.width" in table
    registry = json.loads((pipeline.reports / "registry.json").read_text())
    assert registry["promoted"] is True and registry["model"] == params.tracking.registered_model
