"""Media I/O: audio decoding and levels, probing clips, writing clips, the 1/fps step grid."""

from pathlib import Path

import numpy as np
import pytest

from emi.data.media import (MediaError, decode_audio, grid_steps, image_sequence, probe, rms_dbfs, sample_images,
                            step_times, write_mp4)

FPS, SIDE, SR = 25, 96, 22050


def write_clip(path: Path, seconds: float, audio: np.ndarray | None) -> Path:
    frames = (np.full((SIDE, SIDE, 3), 90, np.uint8) for _ in range(int(seconds * FPS)))
    write_mp4(path, frames, FPS, audio, SR)
    return path


def test_decode_audio_gives_16khz_mono_float32(tiny_dataset):
    clip = tiny_dataset / "raw" / "00000.mp4"
    wave = decode_audio(clip)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size / 16000 - probe(clip).duration_s) <= 0.1
    assert -40 < rms_dbfs(wave) < 0
    assert rms_dbfs(np.zeros(100, np.float32)) == rms_dbfs(np.zeros(0, np.float32)) == float("-inf")


def test_decode_audio_without_track_or_of_garbage(tmp_path):
    assert decode_audio(write_clip(tmp_path / "raw" / "silent.mp4", 3, None)) is None
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(MediaError, match="bad.mp4"):
        decode_audio(bad)
    with pytest.raises(MediaError, match="missing.mp4: file not found"):
        decode_audio(tmp_path / "missing.mp4")


def test_rms_dbfs_of_known_levels():
    assert rms_dbfs(np.ones(1000, np.float32)) == pytest.approx(0.0)
    assert rms_dbfs(np.full(1000, 0.1, np.float32)) == pytest.approx(-20.0)
    t = np.arange(16000) / 16000
    assert rms_dbfs((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)) == pytest.approx(-9.03, abs=0.02)
    assert rms_dbfs(None) == float("-inf")


def test_write_mp4_then_probe_reads_back_what_was_written(tmp_path):
    t = np.arange(2 * SR) / SR
    clip = write_clip(tmp_path / "a.mp4", 2, 0.3 * np.sin(2 * np.pi * 220 * t))
    info = probe(clip)
    assert info.readable and info.error is None and info.exists
    assert (info.width, info.height, info.fps) == (SIDE, SIDE, FPS)
    assert info.has_video and info.has_audio and info.audio_sample_rate == SR
    assert info.duration_s == pytest.approx(2.0, abs=0.1) and info.n_frames == 2 * FPS
    assert not list(tmp_path.glob(".*tmp*")), "write_mp4 must not leave its temporary file"
    mute = probe(write_clip(tmp_path / "b.mp4", 1, None))
    assert mute.readable and not mute.has_audio and mute.audio_sample_rate is None


def test_probe_names_missing_truncated_and_garbage_files(tmp_path):
    assert probe(tmp_path / "none.mp4").as_dict()["error"] == "file not found"
    assert not probe(tmp_path / "none.mp4").exists
    clip = write_clip(tmp_path / "c.mp4", 3, None)
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    cut = probe(clip)
    assert cut.exists and not cut.readable and cut.error
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert not probe(junk).readable and probe(junk).error


def test_grid_steps_counts_whole_steps():
    assert grid_steps(4.0, 5) == 20
    assert grid_steps(3.99, 5) == 19
    assert grid_steps(3.2, 2.5) == 8, "float rounding of 3.2 * 2.5 must not lose the last step"
    assert grid_steps(0.1, 5) == 0


def test_step_times_keep_every_step_or_spread_max_steps_over_the_clip():
    np.testing.assert_array_equal(step_times(20, 5, 20), np.arange(20))
    picked = step_times(6250, 5, 3000)  # a 1,250 s clip
    assert len(picked) == 3000 and picked[0] == 1 and picked[-1] == 6248
    assert np.all(np.diff(picked) >= 2) and np.all(np.diff(picked) <= 3)  # uniform, never the same step twice


def test_image_sequence_orders_frames_by_number_and_skips_other_files(tmp_path):
    import cv2

    for k in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"{k}.jpg"), np.full((8, 8, 3), k * 20, np.uint8))
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    assert [p.name for p in image_sequence(tmp_path)] == ["1.jpg", "2.jpg", "10.jpg"]
    assert image_sequence(tmp_path / "absent") == []
    # three images over a 3 s clip: each stands for one second; 5 fps step centres pick by time
    frames = sample_images(image_sequence(tmp_path), (np.arange(15) + 0.5) / 5, 3.0, 256)
    assert [int(f[0, 0, 0]) // 20 for f in frames] == [1] * 5 + [2] * 5 + [10] * 5
    (tmp_path / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MediaError, match="2.jpg: not a readable image"):
        sample_images(image_sequence(tmp_path), np.array([1.5]), 3.0, 256)
