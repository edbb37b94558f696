"""Clips made the way real recordings are, not the way the generator writes them: a phone's portrait clip (landscape
pixels and a display matrix), an anamorphic clip (non-square pixels), an AVI (its header also counts the empty chunks
of dropped frames), Matroska files cut short (no index to seek back by) or whose audio outlasts the video, audio that
starts after the video, stereo whose channels are in opposite phase. Each is made with the ffmpeg CLI (a system
package of the set-up) from one written clip whose picture says which way is up and whose sound says when it starts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from emi.config import load_params
from emi.data.dataset import Clip
from emi.data.media import AUDIO_SAMPLE_RATE, decode_audio, probe, sample_frames, write_mp4
from emi.features.decode import decode_clip

FPS, SIDE, SR, SECONDS, ONSET = 25, 96, 22050, 3.0, 1.0
CORNER = 30  # the bright block's side, in the top-left corner of every upright frame


def ffmpeg(*args) -> None:
    done = subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-y", *map(str, args)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def upright(tmp_path_factory) -> Path:
    """3 s at 25 fps: a dark frame with a bright block in its top-left corner; silence, then a 440 Hz tone from 1 s."""
    frames = []
    for _ in range(int(SECONDS * FPS)):
        frame = np.full((SIDE, SIDE, 3), 40, np.uint8)
        frame[:CORNER, :CORNER] = 220
        frames.append(frame)
    t = np.arange(int(SECONDS * SR)) / SR
    tone = np.where(t >= ONSET, 0.4 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    path = tmp_path_factory.mktemp("recordings") / "upright.mp4"
    write_mp4(path, iter(frames), FPS, tone, SR)
    return path


def frames_of(path: Path, times=(0.5, 1.5, 2.5)) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return sample_frames(container, np.asarray(times), 256)


def onset_s(wave: np.ndarray) -> float:
    """When the tone starts: the first 10 ms window louder than -30 dBFS."""
    window = AUDIO_SAMPLE_RATE // 100
    rms = np.sqrt(np.mean(wave[: wave.size // window * window].reshape(-1, window) ** 2, axis=1))
    return float(np.argmax(rms > 10 ** (-30 / 20)) * window / AUDIO_SAMPLE_RATE)


def test_a_portrait_phone_clip_is_decoded_upright(upright, tmp_path):
    sideways = tmp_path / "sideways.mp4"
    ffmpeg("-i", upright, "-vf", "transpose=2", "-c:v", "mpeg4", "-q:v", "2", "-c:a", "copy", sideways)
    phone = tmp_path / "phone.mp4"  # the pixels lie on their side; the display matrix turns them back
    ffmpeg("-i", sideways, "-c", "copy", "-metadata:s:v:0", "rotate=270", phone)
    with av.open(str(phone)) as container:
        assert next(container.decode(video=0)).rotation == -90, "ffmpeg wrote no display matrix"
    for seen, reference in zip(frames_of(phone), frames_of(upright)):
        assert seen.shape == reference.shape
        assert seen[:CORNER - 4, :CORNER - 4].mean() > 180 and seen[-CORNER:, -CORNER:].mean() < 80  # block top-left
        assert np.abs(seen.astype(int) - reference).mean() < 4  # the same picture, up to the re-encoding
    sideways_frame = frames_of(sideways)[0]  # the control: without a matrix the block stays where the pixels put it
    assert sideways_frame[-CORNER + 4:, :CORNER - 4].mean() > 180


def test_an_anamorphic_clip_is_decoded_with_square_pixels(upright, tmp_path):
    # half the columns, each shown twice as wide (sample aspect ratio 2:1): a player shows the upright picture
    narrow = tmp_path / "anamorphic.mp4"
    ffmpeg("-i", upright, "-vf", "scale=iw/2:ih,setsar=2", "-c:v", "mpeg4", "-q:v", "2", "-c:a", "copy", narrow)
    with av.open(str(narrow)) as container:
        assert container.streams.video[0].sample_aspect_ratio == 2, "ffmpeg wrote no sample aspect ratio"
    for seen, reference in zip(frames_of(narrow), frames_of(upright)):
        assert seen.shape == reference.shape == (SIDE, SIDE, 3)  # not (SIDE, SIDE // 2): the block stays square
        assert seen[:CORNER - 4, :CORNER - 4].mean() > 180 and seen[:CORNER - 4, CORNER + 4:].mean() < 80
        assert np.abs(seen.astype(int) - reference).mean() < 6  # the same picture, up to the lost columns


def test_an_avi_whose_header_counts_dropped_frames_is_readable_and_a_cut_one_is_not(upright, tmp_path):
    avi = tmp_path / "clip.avi"
    ffmpeg("-i", upright, "-c:v", "mpeg4", "-q:v", "3", "-c:a", "libmp3lame", avi)
    with av.open(str(avi)) as container:
        video = container.streams.video[0]
        packets = sum(1 for p in container.demux(video) if p.size)
    assert packets < video.frames, "the muxer wrote no empty chunk: the case this checks did not arise"
    info = probe(avi)
    assert info.readable and info.error is None and info.n_frames == packets
    cut = tmp_path / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    assert not probe(cut).readable and probe(cut).error.startswith("truncated:")


def test_matroska_cut_short_is_named_truncated_and_audio_outlasting_the_video_is_not(upright, tmp_path):
    mkv = tmp_path / "clip.mkv"
    ffmpeg("-i", upright, "-c", "copy", mkv)
    assert probe(mkv).readable
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    info = probe(cut)  # was "PermissionError: Operation not permitted" (seeking back in a file without its index)
    assert not info.readable and info.error.startswith("truncated: the packets end at"), info.error
    longer_audio = tmp_path / "long_audio.mkv"  # 1 s of video, 3 s of audio: the file's duration is the audio's
    ffmpeg("-t", 1, "-i", upright, "-i", upright, "-map", "0:v", "-map", "1:a", "-c", "copy", longer_audio)
    assert probe(longer_audio).readable, probe(longer_audio).error


def test_audio_that_starts_after_the_video_is_placed_on_the_videos_timeline(upright, tmp_path):
    late = tmp_path / "late.mp4"  # the audio track starts 0.5 s after the video
    ffmpeg("-i", upright, "-itsoffset", 0.5, "-i", upright, "-map", "0:v", "-map", "1:a", "-c", "copy", late)
    assert onset_s(decode_audio(upright, origin=0.0)) == pytest.approx(ONSET, abs=0.03)
    assert onset_s(decode_audio(late)) == pytest.approx(ONSET, abs=0.06)  # the track alone, from its own start
    # the track's first sample is 0.5 s (less the AAC encoder's priming, ~0.05 s) into the video
    assert onset_s(decode_audio(late, origin=0.0)) == pytest.approx(ONSET + 0.5, abs=0.08)
    params = load_params(None, profile="tiny")
    decoded = decode_clip(Clip("late", "test", late), params.extract, params.data, want_frames=True, want_audio=True)
    assert decoded.audio_status == "ok" and onset_s(decoded.wave) == pytest.approx(ONSET + 0.5, abs=0.08)
    same = decode_clip(Clip("upright", "test", upright), params.extract, params.data, True, True)
    assert onset_s(same.wave) == pytest.approx(ONSET, abs=0.03)  # nothing moves where both streams start at 0


def test_stereo_in_opposite_phase_is_read_from_a_channel_and_ordinary_stereo_is_ffmpegs_downmix(upright, tmp_path):
    from emi.data.media import rms_dbfs

    inverted = tmp_path / "inverted.mp4"  # right = -left: the channels sum to silence
    ffmpeg("-i", upright, "-af", "pan=stereo|c0=c0|c1=-1*c0", "-c:v", "copy", "-c:a", "pcm_s16le", "-f", "mov",
           inverted)
    reference = decode_audio(upright, origin=0.0)
    wave = decode_audio(inverted, origin=0.0)
    assert rms_dbfs(wave) == pytest.approx(rms_dbfs(reference), abs=1.0)  # was silence: audio and text masked
    assert onset_s(wave) == pytest.approx(ONSET, abs=0.03)
    params = load_params(None, profile="tiny")
    decoded = decode_clip(Clip("inverted", "test", inverted), params.extract, params.data, False, True)
    assert decoded.audio_status == "ok"
    ordinary = tmp_path / "stereo.mp4"  # the same sound in both channels, one of them quieter
    ffmpeg("-i", upright, "-af", "pan=stereo|c0=c0|c1=0.5*c0", "-c:v", "copy", "-c:a", "pcm_s16le", "-f", "mov",
           ordinary)
    with av.open(str(ordinary)) as container:  # what FFmpeg's own downmix makes of it
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        downmix = np.concatenate([out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                                  for out in resampler.resample(frame)] +
                                 [out.to_ndarray().reshape(-1) for out in resampler.resample(None)])
    assert np.array_equal(decode_audio(ordinary), downmix)
