"""The product promise on a user folder full of bad inputs: every bad item is reported (and skipped or masked)
or rejected with a message naming it, nothing else is lost, and the good clips get exactly the results of a
clean run.

The folder mimics a user's Hume-Vidmimic2 copy (source `local`) of the tiny dataset. Train/valid hold only its good
clips, so this run trains the models of the session's clean run of the same data and params (`tiny_pipeline`, the
same stages in the same order); the test split holds the good test clips plus every kind of bad item.
"""

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from emi.config import SPLIT_HEADER, load_params
from emi.contracts.report import DataValidationError
from emi.data.dataset import read_transcripts
from emi.data.media import write_mp4
from emi.features.store import load_features
from emi.paths import Layout
from emi.stages.download import download
from tests.conftest import run_tiny_stages

RNG = np.random.default_rng(3)
GOOD_LABELS = "0.5,0.5,0.5,0.5,0.5,0.5"


def frames(n: int, size: tuple[int, int] = (96, 96)) -> list[np.ndarray]:
    return [RNG.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)]


def tone(seconds: float, sr: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * 180 * t)


# id -> (what it is, how it is listed in test_split.csv)
BAD = {
    "00100": "truncated mp4",
    "00101": "no audio stream",
    "00102": "silent audio track",
    "00103": "one frame (shorter than one 5 fps step)",
    "00104": "no video stream (0 frames)",
    "00105": "huge resolution",
    "00106": "listed, file missing",
    "00107": "label NaN",
    "00108": "label negative",
    "00109": "label > 1",
}


def build_user_folder(tiny: Path, root: Path) -> dict:
    """A copy of the tiny dataset that differs from it only in its test split and clips."""
    dirty = root / "dirty"
    shutil.copytree(tiny, dirty, ignore=shutil.ignore_patterns("_generator"))
    clips = dirty / "raw"
    good = clips / "00000.mp4"
    clips.joinpath("00100.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write_mp4(clips / "00101.mp4", frames(75), 25, None, 22050)
    write_mp4(clips / "00102.mp4", frames(75), 25, np.zeros(3 * 22050), 22050)
    write_mp4(clips / "00103.mp4", frames(1), 25, tone(0.04), 22050)
    write_mp4(clips / "00104.mp4", [], 25, tone(3.0), 22050)  # audio only
    write_mp4(clips / "00105.mp4", frames(25, (1080, 1920)), 25, tone(1.0), 22050)
    for i in ("00107", "00108", "00109"):
        shutil.copy(clips / "00001.mp4", clips / f"{i}.mp4")
    write_mp4(clips / "00199.mp4", frames(50), 25, tone(2.0), 22050)  # a file no split lists
    test = (dirty / "test_split.csv").read_text().splitlines()
    first_test_row = test[1]
    rows = [f"{i},{GOOD_LABELS}" for i in ("00100", "00101", "00102", "00103", "00104", "00105", "00106")]
    rows += ["00107,nan,0.5,0.5,0.5,0.5,0.5", "00108,0.5,-0.2,0.5,0.5,0.5,0.5", "00109,0.5,0.5,1.7,0.5,0.5,0.5"]
    rows.append(first_test_row)  # a duplicate id
    (dirty / "test_split.csv").write_text("\n".join(test + rows) + "\n")
    return {"dirty_src": dirty, "duplicate": first_test_row.split(",")[0]}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def run_pipeline(source: Path, root: Path, tolerance: float):
    """`emi download` from ``source``, then the stages of the session's `tiny_pipeline` (``run_tiny_stages``)."""
    params = load_params(None, profile="tiny", overrides=[
        "download.source=local", f"download.local.path={source}", f"data.max_error_fraction={tolerance}"])
    at = Layout(root)
    dl = download(params, at.raw, at.validation, show_progress=False)
    ran = run_tiny_stages(params, at)
    return SimpleNamespace(params=params, download=dl, transcribe=ran.transcribe, extract=ran.extract,
                           stage2=ran.stage2, evaluate=ran.evaluate, root=root, layout=at)


@pytest.fixture(scope="module")
def runs(tiny_dataset, tiny_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    folders = build_user_folder(tiny_dataset, root / "user")
    before = digest(folders["dirty_src"])
    dirty = run_pipeline(folders["dirty_src"], root / "dirty", tolerance=0.6)
    return SimpleNamespace(dirty=dirty, clean=tiny_pipeline.layout, before=before, **folders)


@pytest.mark.slow
def test_inputs_are_never_modified(runs):
    assert digest(runs.dirty_src) == runs.before


@pytest.mark.slow
def test_download_report_names_every_bad_row(runs):
    report = runs.dirty.download.report
    by_id: dict[str, set[str]] = {}
    for p in report.problems:
        by_id.setdefault(p.Filename, set()).add(p.check)
    for clip in ("00100", "00103", "00104", "00106", "00107", "00108", "00109", runs.duplicate):
        assert clip in by_id, f"{clip} ({BAD.get(clip, 'duplicate id')}) not reported: {by_id}"
    assert any("00199" in w for w in report.warnings)  # the file no split lists
    assert {"00101", "00102", "00105"}.isdisjoint(by_id), "usable clips must not be reported as errors"


@pytest.mark.slow
def test_each_bad_clip_gets_the_documented_treatment(runs):
    tr = read_transcripts(runs.dirty.transcribe.table).set_index("id")
    assert tr.loc["00101", "status"] == "no_audio" and tr.loc["00102", "status"] == "silent"
    assert tr.loc["00100", "status"] == "error" and tr.loc["00106", "status"] == "error"
    index = pd.read_csv(runs.dirty.layout.features / "index.csv", dtype={"id": str}).set_index("id")
    for clip in ("00100", "00103", "00104", "00106"):  # skipped, reported, within tolerance
        assert index.loc[clip, "status"] == "error", clip
        assert index.loc[clip, "detail"], clip
    for clip in ("00101", "00102"):  # processed with the audio modality masked
        assert index.loc[clip, "status"] == "ok" and not index.loc[clip, "has_audio"] and index.loc[clip, "has_visual"]
    assert index.loc["00105", "status"] == "ok" and index.loc["00105", "n_steps"] == 5  # huge: downscaled
    fs = load_features(runs.dirty.layout.features)
    assert all(np.isfinite(v).all() for v in [*fs.visual, *fs.audio]) and np.isfinite(fs.text).all()
    assert "00199" not in fs.ids
    sub = pd.read_csv(runs.dirty.layout.reports / "submission.csv", dtype={"Filename": str})
    assert list(sub.columns) == list(SPLIT_HEADER)
    assert sub["Filename"].is_unique and set(runs.dirty.evaluate.submission_unpredicted) >= {"00100", "00104"}
    report = (runs.dirty.layout.reports / "report.md").read_text()
    for clip in ("00100", "00104"):  # each unreadable test clip named in the report with the reason
        assert f"- `{clip}`: {index.loc[clip, 'detail']}" in report, clip


@pytest.mark.slow
def test_good_clips_get_the_results_of_a_clean_run(runs):
    clean = runs.clean  # the session's tiny pipeline
    a, b = load_features(clean.features), load_features(runs.dirty.layout.features)
    for clip in a.ids:
        i, j = a.ids.index(clip), b.ids.index(clip)
        np.testing.assert_array_equal(a.visual[i], b.visual[j])
        np.testing.assert_array_equal(a.audio[i], b.audio[j])
        np.testing.assert_array_equal(a.text[i], b.text[j])
    clean_stage2 = json.loads((clean.stage2 / "metrics.json").read_text())
    assert clean_stage2["valid_pearson_mean"] == runs.dirty.stage2.metrics["valid_pearson_mean"]
    pa = pd.read_csv(clean.stage2 / "predictions.csv", dtype={"id": str}).set_index("id")
    pb = pd.read_csv(runs.dirty.layout.stage2 / "predictions.csv", dtype={"id": str}).set_index("id")
    pd.testing.assert_frame_equal(pa.loc[a.ids, ["Joy", "Amusement", "weight_V"]],
                                  pb.loc[a.ids, ["Joy", "Amusement", "weight_V"]])
    clean_metrics = json.loads((clean.reports / "scores.json").read_text())
    dirty_metrics = json.loads((runs.dirty.layout.reports / "scores.json").read_text())
    assert clean_metrics["valid"] == dirty_metrics["valid"]


@pytest.mark.slow
@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.write_bytes("Filename,Admiration\n00000,0.5\n".encode("utf-16")), "not UTF-8"),
    (lambda p: p.write_text(p.read_text().replace(",", ";")), "not comma-delimited"),
    (lambda p: p.write_text(p.read_text().replace("Empathic Pain", "EmpathicPain")), "missing ['Empathic Pain']"),
    (lambda p: p.write_text(p.read_text().replace(",Joy", ",Joy,Extra", 1)), "unexpected ['Extra']"),
])
def test_broken_split_files_are_rejected_with_the_reason(dataset_copy, tmp_path, mutate, message):
    mutate(dataset_copy / "train_split.csv")
    params = load_params(None, profile="tiny", overrides=["download.source=local",
                                                          f"download.local.path={dataset_copy}"])
    with pytest.raises(DataValidationError) as err:
        download(params, tmp_path / "raw", tmp_path / "reports", show_progress=False)
    assert "train_split.csv" in str(err.value) and message in str(err.value)
