"""`emi predict` from the model registry on generated clips: the numbers `evaluate` reported, masked modalities,
and a folder of clips with unreadable files among them (JSON table, ABAW submission).

The whole tiny pipeline runs for real here (whisper ASR included; the session's `tiny_pipeline`, built once per
session and registered in an MLflow store of its own in a temp folder).
"""

import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from emi.config import EMOTIONS, SPLIT_HEADER, load_params
from emi.data.media import write_mp4
from emi.stages.ablate import ablation
from emi.stages.evaluate import evaluate
from emi.stages.stage2 import stage2
from emi.tracking.registry import compare_versions, register_outputs
from tests.conftest import EMI, link_layout, pipeline_store


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline):
    with pipeline_store(tiny_pipeline.params):  # its registry, which another worker may have made
        yield tiny_pipeline


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EMI, "predict", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_from_the_champion_matches_evaluate(pipeline, tmp_path):
    name = pipeline.params.tracking.registered_model
    assert pipeline.registered["champion_version"] == pipeline.registered["version"]
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
    # the notes name each unusable modality with its status (the wording of emi.features.featurize.Features.notes)
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
    # the same data and Stage I, a Stage II trained with the changed param, ablated, evaluated and registered again
    layout = link_layout(pipeline.layout, tmp_path / "second", "raw", "transcripts", "features", "aligned", "stage1")
    stage2(params, layout.aligned_file, layout.raw, layout.stage2, show_progress=False)
    ablation(params, layout.aligned_file, layout.raw, layout.reports, modality_sets=("VAT",),
             fusions=("quality", "average"), inputs=(params.stage2.inputs,), stage2_model=layout.fusion_model,
             models_dir=layout.ablation_models)
    evaluate(params, layout, show_progress=False)
    second = register_outputs(params, layout)
    first = pipeline.registered
    assert second["new"] and int(second["version"]) == int(first["version"]) + 1
    table = compare_versions(params)
    assert f"{first['version']}" in table and second["version"] in table
    assert "stage2.width" in table


VALUES = [*EMOTIONS, "weight_V", "weight_A", "weight_T"]


@pytest.fixture(scope="module")
def folder_run(pipeline, tmp_path_factory):
    """One `emi predict` of a folder (three good clips, a truncated copy of one, random bytes named x.mp4, and a
    Thumbs.db) in chunks of two clips, writing a JSON table and a submission; and one of the good clips alone."""
    root = tmp_path_factory.mktemp("predict_folder")
    folder = root / "clips"
    folder.mkdir()
    good = sorted(pipeline.raw.glob("raw/*.mp4"))[:3]
    for clip in good:
        shutil.copy(clip, folder / clip.name)
    data = good[0].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[:len(data) // 2])
    (folder / "x.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not a video")
    model = ("--model", str(pipeline.layout.models), "--profile", "tiny")
    done = run_predict(str(folder), *model, "--set", "extract.shard_size=2", "--out", str(root / "pred.json"),
                       "--submission", str(root / "submission.csv"))
    assert done.returncode == 0, done.stderr
    alone = run_predict(*[str(c) for c in good], *model, "--out", str(root / "alone.csv"))
    assert alone.returncode == 0, alone.stderr
    return SimpleNamespace(done=done, folder=folder, good=good, json=root / "pred.json",
                           table=pd.DataFrame(json.loads((root / "pred.json").read_text())),
                           submission=pd.read_csv(root / "submission.csv", dtype={"Filename": str}),
                           alone=pd.read_csv(root / "alone.csv", keep_default_na=False))


@pytest.mark.slow
def test_folder_is_its_video_files_by_name_and_an_unreadable_clip_is_a_row_not_an_abort(folder_run):
    run, folder = folder_run, folder_run.folder
    ids = [str(folder / c.name) for c in run.good] + [str(folder / "truncated.mp4"), str(folder / "x.mp4")]
    assert run.table["id"].tolist() == ids  # Thumbs.db is not a video: no row
    assert run.table["status"].tolist() == ["ok"] * 3 + ["error"] * 2
    assert run.table["Filename"].tolist() == [c.stem for c in run.good] + ["truncated", "x"]
    bad = run.table[run.table.status == "error"]
    assert bad[VALUES].isna().all().all() and bad["warning"].str.contains("not a readable video").all()
    for name in ("truncated.mp4", "x.mp4"):
        assert any(name in line and "not a readable video" in line for line in run.done.stderr.splitlines())
        assert name in run.done.stdout  # the printed table has its row
    assert "Thumbs.db" not in run.done.stdout + run.done.stderr
    # chunked with unreadable clips among them, the good clips get what they get predicted on their own
    ok = run.table[run.table.status == "ok"]
    assert run.alone["id"].tolist() == [str(c) for c in run.good] and (run.alone["status"] == "ok").all()
    np.testing.assert_allclose(ok[VALUES].to_numpy(float), run.alone[VALUES].to_numpy(float), atol=1e-5)
    assert ok["transcript"].tolist() == run.alone["transcript"].tolist()
    assert "clips/s" in run.done.stderr


@pytest.mark.slow
def test_json_table_is_a_list_of_records(folder_run):
    records = json.loads(folder_run.json.read_text())
    assert isinstance(records, list) and len(records) == 5
    assert set(records[0]) >= {"id", "Filename", "status", "transcript", "warning", *VALUES}
    assert records[-1]["status"] == "error" and records[-1]["Joy"] is None  # NaN is null, not the string "NaN"
    assert all(0 <= r[e] <= 1 for r in records[:3] for e in EMOTIONS)


@pytest.mark.slow
def test_submission_is_abaw_format_with_the_good_clips_by_file_stem(folder_run):
    run = folder_run
    assert list(run.submission.columns) == list(SPLIT_HEADER)
    assert run.submission["Filename"].tolist() == [c.stem for c in run.good]  # unreadable clips left out
    np.testing.assert_allclose(run.submission[list(EMOTIONS)].to_numpy(float),
                               run.table[list(EMOTIONS)].iloc[:3].to_numpy(float), atol=1e-6)
    summary = run.done.stderr.strip().splitlines()[-1]
    assert "submission" in summary and "truncated.mp4" in summary and "x.mp4" in summary


def test_unknown_out_extension_fails_before_any_work(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"never read")
    # the model does not exist either: the extension is checked first
    done = run_predict(str(tmp_path), "--model", str(tmp_path / "no-models"), "--out", str(tmp_path / "pred.txt"))
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "pred.txt" in lines[0] and ".csv or .json" in lines[0] and not (tmp_path / "pred.txt").exists()


def test_empty_folder_and_clashing_file_stems_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "Thumbs.db").write_bytes(b"")
    done = run_predict(str(empty), "--model", str(tmp_path / "no-models"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no video files" in done.stderr, done.stderr
    for sub, name in (("a", "clip.mp4"), ("b", "clip.MKV")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_bytes(b"never read")
    done = run_predict(str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(tmp_path / "no-models"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert str(tmp_path / "a" / "clip.mp4") in done.stderr and str(tmp_path / "b" / "clip.MKV") in done.stderr
