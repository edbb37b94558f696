"""``emi extract`` with the real packaged encoders: the 5 fps grid, resumable shards, bad clips, a killed run."""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from emi.contracts.report import DataValidationError
from emi.data.media import grid_steps, write_mp4
from emi.features.store import load_features
from emi.data.dataset import list_clips
from emi.features.decoded import DecodedStore
from emi.paths import decoded_dir, work_dir
from emi.stages.extract import extract
from tests.conftest import EMI, tiny, transcripts_from_script

pytestmark = pytest.mark.slow  # every test runs the stage with the real encoders




def silent_frames(n: int, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_a_4s_clip_has_20_visual_and_20_audio_steps(tmp_path):
    raw = tmp_path / "raw"
    (raw / "raw").mkdir(parents=True)
    t = np.arange(4 * 22050) / 22050
    write_mp4(raw / "raw" / "00000.mp4", silent_frames(100), 25, 0.3 * np.sin(2 * np.pi * 220 * t), 22050)
    pd.DataFrame({"Filename": ["00000"], **{e: [0.5] for e in
                  ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")}}).to_csv(
        raw / "train_split.csv", index=False)
    (raw / "valid_split.csv").write_text((raw / "train_split.csv").read_text().splitlines()[0] + "\n")
    tr = tmp_path / "tr.csv"
    pd.DataFrame({"id": ["00000"], "text": ["hello"], "status": ["ok"]}).to_csv(tr, index=False)
    extract(tiny(), raw, tr, tmp_path / "features", None, show_progress=False)
    fs = load_features(tmp_path / "features")
    assert grid_steps(4.0, 5) == 20
    assert fs.visual[0].shape == (20, 519) and fs.audio[0].shape == (20, 384)
    assert fs.mask.tolist() == [[True, True, True]]


@pytest.fixture
def stage_inputs(dataset_copy, tmp_path):
    return dataset_copy, transcripts_from_script(dataset_copy, tmp_path / "tr.csv")


def test_extract_resumes_and_recomputes_only_what_changed(stage_inputs, tmp_path):
    raw, tr = stage_inputs
    out = tmp_path / "features"
    params = tiny("extract.shard_size=4")
    first = extract(params, raw, tr, out, tmp_path / "reports", show_progress=False)
    assert first.shards_done_now == {"visual": 3, "audio": 3, "text": 3}
    assert (tmp_path / "reports" / "extract.json").is_file() and first.report.passed
    before = load_features(out)
    work = work_dir(out)
    assert all(os.path.samefile(p, work / p.relative_to(out)) for p in out.rglob("shard-*")), "linked, not copied"
    # the clips of the splits extract.keep_decoded names (tiny: valid) are kept decoded for Stage I and evaluate
    kept = DecodedStore(decoded_dir(out), params.extract, params.data)
    clips = list_clips(raw)
    assert params.extract.keep_decoded == ("valid",) and {c.split for c in clips} > {"valid"}
    assert sorted(c.id for c in clips if kept.load(c) is not None) == sorted(c.id for c in clips if c.split == "valid")

    # a run killed while writing shard 1: its receipt never got written
    (work / "visual" / "shard-00001.json").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in work.rglob("shard-*.npz")}
    again = extract(params, raw, tr, out, None, show_progress=False)
    assert again.shards_done_now == {"visual": 1, "audio": 0, "text": 0}
    changed = {p for p in mtimes if p.stat().st_mtime_ns != mtimes[p]}
    assert changed == {work / "visual" / "shard-00001.npz"}
    after = load_features(out)
    assert all(np.array_equal(a, b) for a, b in zip(before.visual, after.visual))

    # DVC deletes the output folder before it runs the stage: the finished shards are still reused
    shutil.rmtree(out)
    assert extract(params, raw, tr, out, None, show_progress=False).shards_done_now == {m: 0 for m in after.dims}
    assert all(np.array_equal(a, b) for a, b in zip(before.audio, load_features(out).audio))

    # an audio-only param touches only audio shards; the fps touches visual and audio, not text
    assert extract(tiny("extract.shard_size=4", "data.silence_dbfs=-70"), raw, tr, out, None,
                   show_progress=False).shards_done_now == {"visual": 0, "audio": 3, "text": 0}
    fps = extract(tiny("extract.shard_size=4", "data.silence_dbfs=-70", "extract.fps=2.5"), raw, tr, out, None,
                  show_progress=False)
    assert fps.shards_done_now == {"visual": 3, "audio": 3, "text": 0}
    assert all(v.shape[0] == a.shape[0] for v, a in zip(load_features(out).visual, load_features(out).audio))


def test_an_encoder_code_revision_recomputes_that_modality_only(stage_inputs, tmp_path, monkeypatch):
    from emi.encoders.visual import FerEncoder

    raw, tr = stage_inputs
    out = tmp_path / "features"
    extract(tiny(), raw, tr, out, None, show_progress=False)
    monkeypatch.setattr(FerEncoder, "revision", FerEncoder.revision + 1)  # code that changes the features
    again = extract(tiny(), raw, tr, out, None, show_progress=False)
    assert again.shards_done_now == {"visual": 1, "audio": 0, "text": 0}


def test_clip_without_audio_and_silent_clip_are_masked_not_dropped(stage_inputs, tmp_path):
    raw, tr = stage_inputs
    write_mp4(raw / "raw" / "00001.mp4", silent_frames(80), 25, None, 22050)
    write_mp4(raw / "raw" / "00002.mp4", silent_frames(80), 25, np.zeros(22050 * 3), 22050)
    result = extract(tiny(), raw, tr, tmp_path / "f", tmp_path / "reports", show_progress=False)
    fs = load_features(tmp_path / "f")
    mask = dict(zip(fs.ids, fs.mask.tolist()))
    assert mask["00001"] == [True, False, True] and mask["00002"] == [True, False, True]
    i = fs.ids.index("00001")
    assert fs.audio[i].shape[0] == fs.visual[i].shape[0] == 16
    assert any("no_audio" in w for w in result.report.warnings)
    assert any("silent" in w for w in result.report.warnings)


def test_corrupt_clip_is_named_and_skipped_within_tolerance(stage_inputs, tmp_path):
    raw, tr = stage_inputs
    (raw / "raw" / "00003.mp4").write_bytes(b"not a video")
    with pytest.raises(DataValidationError, match="00003"):
        extract(tiny(), raw, tr, tmp_path / "f", tmp_path / "reports", show_progress=False)
    assert "00003" in (tmp_path / "reports" / "extract.md").read_text()
    ok = extract(tiny("data.max_error_fraction=0.1"), raw, tr, tmp_path / "f", None, show_progress=False)
    assert ok.report.passed and ok.report.n_bad_rows == 1
    assert "00003" not in load_features(tmp_path / "f").ids and len(load_features(tmp_path / "f").ids) == 11


def test_killed_extract_resumes_without_redoing_finished_shards(stage_inputs, tmp_path):
    raw, tr = stage_inputs
    out = tmp_path / "features"
    cmd = [EMI, "extract", "--profile", "tiny", "--set", "extract.shard_size=2", "--set", "extract.decode_workers=1",
           "--raw", str(raw), "--transcripts", str(tr), "--out", str(out), "--reports", str(tmp_path / "r"),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    work = work_dir(out)
    while not (work / "audio" / "shard-00001.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (work / "audio").glob("shard-*.json"))
    assert finished and len(finished) < 6, "the kill should land mid-run"
    result = extract(tiny("extract.shard_size=2", "extract.decode_workers=1"), raw, tr, out, None,
                     show_progress=False)
    assert result.shards_done_now["audio"] == 6 - len(finished)
    assert not list(work.rglob(".*.tmp*")), "temporary files left by the kill are cleaned up"
    assert len(load_features(out).ids) == 12
