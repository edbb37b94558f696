"""Encoder registry, the 5 fps grid, resumable shards and bad clips in `emi extract` (real packaged models)."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from emi.config import EncoderSpec, load_params
from emi.encoders import (EncoderError, _KerasSameMaxPool, load_audio, load_keras_mini_xception, load_visual,
                          packaged_path, resolve)
from emi.extract import extract, grid_steps, load_features, pool_to_grid
from emi.media import write_mp4
from emi.validation import DataValidationError
from tests.conftest import EMI

CPU = torch.device("cpu")


def tiny(*overrides: str):
    return load_params(None, overrides=list(overrides), profile="tiny")


def transcripts_from_script(raw: Path, out: Path) -> Path:
    """What `emi transcribe` writes, taken from the generator's script (keeps these tests ASR-free)."""
    lat = pd.read_csv(raw / "_generator" / "latents.csv", dtype={"id": str})
    pd.DataFrame({"id": lat["id"], "text": lat["sentence"], "status": "ok"}).to_csv(out, index=False)
    return out


def silent_frames(n: int, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------- registry
def test_registry_resolves_packaged_local_and_random(tmp_path):
    spec = tiny().extract.visual
    assert resolve(spec, "extract.visual").source == "packaged"
    local = tmp_path / "my_fer.hdf5"
    shutil.copy(packaged_path("fer", "mini-xception"), local)
    enc = load_visual(spec.model_copy(update={"path": local}), CPU, torch.float32)
    assert enc.resolved.source == "local" and enc.resolved.location == str(local.resolve())
    frames = np.stack(silent_frames(3))
    packaged = load_visual(spec, CPU, torch.float32)
    np.testing.assert_allclose(enc.encode(frames), packaged.encode(frames), rtol=1e-6)  # same weights, any path

    clip = EncoderSpec(kind="open_clip", name="ViT-B-16", allow_random_init=True, dim=768)
    resolved = resolve(clip, "extract.visual")
    assert resolved.random_init and "random" in resolved.describe()


def test_random_init_is_the_same_in_every_load_and_differs_by_spec():
    # extract, Stage I, evaluate and predict each load the encoder: "random" must mean the same weights
    spec = EncoderSpec(kind="wav2vec2", name="w2v-test", pretrained="random", allow_random_init=True, dim=32)
    a, b = (load_audio(spec, CPU, torch.float32).model.state_dict() for _ in range(2))
    c = load_audio(spec.model_copy(update={"name": "w2v-other"}), CPU, torch.float32).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    load_audio(spec, CPU, torch.float32)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is left alone


def test_registry_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(EncoderError, match="allow_random_init is false"):
        resolve(EncoderSpec(kind="open_clip", name="ViT-B-16", dim=768), "extract.visual")
    with pytest.raises(EncoderError, match="does not exist"):
        resolve(EncoderSpec(kind="bert", name="x", path=tmp_path / "nope", dim=384), "extract.text")
    with pytest.raises(EncoderError, match="outputs 519-d"):
        load_visual(tiny().extract.visual.model_copy(update={"dim": 768}), CPU, torch.float32)


def test_pretrained_fer_weights_are_loaded_not_random():
    spec = tiny().extract.visual
    pretrained = load_visual(spec, CPU, torch.float32)
    random = load_visual(spec.model_copy(update={"path": None, "name": "unpackaged", "allow_random_init": True}),
                         CPU, torch.float32)
    assert random.resolved.random_init and not pretrained.resolved.random_init
    port = load_keras_mini_xception(Path(pretrained.resolved.location))
    bn = port.stem[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # trained statistics
    frames = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    assert not np.allclose(pretrained.encode(frames), random.encode(frames), atol=1e-3)


# ----------------------------------------------------------------------------- the grid
def test_inference_copy_of_fer_computes_the_same_function():
    # BN folded into the convs, channels_last, pooling without the padded copy: same outputs as the port
    model = load_keras_mini_xception(packaged_path("fer", "mini-xception"))
    fast = model.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(5, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for ref, out in zip(model(x), fast(x.contiguous(memory_format=torch.channels_last))):
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 15, 30, 31, 60])
def test_keras_same_pooling_matches_explicit_end_padding(n):
    x = torch.randn(2, 3, n, n)
    total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
    pads = [total // 2, total - total // 2] * 2
    ref = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, pads, value=float("-inf")), 3, 2)
    assert torch.equal(_KerasSameMaxPool(3, 2)(x), ref)


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


def test_pooling_averages_the_states_inside_each_step():
    states = np.arange(10, dtype=np.float32)[:, None]  # 10 states at 50 Hz = two 0.1 s steps at 10 fps
    np.testing.assert_allclose(pool_to_grid(states, 50, 10, 2).ravel(), [2.0, 7.0])


def test_whisper_encoder_is_real_and_50hz():
    enc = load_audio(tiny().extract.audio, CPU, torch.float32)
    assert enc.resolved.source == "packaged"
    out = enc.encode(np.zeros((2, 16000 * 2), np.float32))
    assert out.shape == (2, 100, 384)


# ----------------------------------------------------------------------------- stage behaviour
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

    # a run killed while writing shard 1: its receipt never got written
    (out / "visual" / "shard-00001.json").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("shard-*.npz")}
    again = extract(params, raw, tr, out, None, show_progress=False)
    assert again.shards_done_now == {"visual": 1, "audio": 0, "text": 0}
    changed = {p for p in mtimes if p.stat().st_mtime_ns != mtimes[p]}
    assert changed == {out / "visual" / "shard-00001.npz"}
    after = load_features(out)
    assert all(np.array_equal(a, b) for a, b in zip(before.visual, after.visual))

    # an audio-only param touches only audio shards; the fps touches visual and audio, not text
    assert extract(tiny("extract.shard_size=4", "extract.silence_dbfs=-70"), raw, tr, out, None,
                   show_progress=False).shards_done_now == {"visual": 0, "audio": 3, "text": 0}
    fps = extract(tiny("extract.shard_size=4", "extract.silence_dbfs=-70", "extract.fps=2.5"), raw, tr, out, None,
                  show_progress=False)
    assert fps.shards_done_now == {"visual": 3, "audio": 3, "text": 0}
    assert all(v.shape[0] == a.shape[0] for v, a in zip(load_features(out).visual, load_features(out).audio))


def test_an_encoder_code_revision_recomputes_that_modality_only(stage_inputs, tmp_path, monkeypatch):
    from emi.encoders import FerEncoder

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
    ok = extract(tiny("download.validation.max_error_fraction=0.1"), raw, tr, tmp_path / "f", None,
                 show_progress=False)
    assert ok.report.passed and ok.report.n_bad_rows == 1
    assert "00003" not in load_features(tmp_path / "f").ids and len(load_features(tmp_path / "f").ids) == 11


@pytest.mark.slow
def test_killed_extract_resumes_without_redoing_finished_shards(stage_inputs, tmp_path):
    raw, tr = stage_inputs
    out = tmp_path / "features"
    cmd = [EMI, "extract", "--profile", "tiny", "--set", "extract.shard_size=2", "--set", "extract.decode_workers=1",
           "--raw", str(raw), "--transcripts", str(tr), "--out", str(out), "--reports", str(tmp_path / "r"),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "audio" / "shard-00001.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (out / "audio").glob("shard-*.json"))
    assert finished and len(finished) < 6, "the kill should land mid-run"
    result = extract(tiny("extract.shard_size=2", "extract.decode_workers=1"), raw, tr, out, None,
                     show_progress=False)
    assert result.shards_done_now["audio"] == 6 - len(finished)
    assert not list(out.rglob(".*.tmp*")), "temporary files left by the kill are cleaned up"
    assert len(load_features(out).ids) == 12


def test_allocator_tuning_applies_on_glibc_and_is_idempotent():
    import platform

    from emi.utils import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True and keep_freed_memory() is True
