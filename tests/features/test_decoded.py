"""Clips decoded once and kept (emi.features.decoded): a kept clip reads back as the decoder makes it, any change to
the clip or the decode settings misses, and a damaged file is decoded again instead of read."""

import shutil

import numpy as np
import pytest

from emi.config import load_params
from emi.data.dataset import Clip, list_clips
from emi.features import decode as decode_module
from emi.features.decode import decode_clip, decode_clips
from emi.features.decoded import DecodedStore


def test_frames_and_waveform_round_trip_bit_for_bit_and_only_kept_splits_are_kept(tmp_path, caplog):
    """Fast: a decoded clip as the decoder returns it (frames of two sizes, a float waveform) without a video."""
    from emi.features.decode import Decoded

    p = load_params(None, profile="tiny")
    rng = np.random.default_rng(0)
    (tmp_path / "a.mp4").write_bytes(b"clip a")
    clip = Clip("a", "valid", tmp_path / "a.mp4")
    frames = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), rng.integers(0, 256, (120, 96, 3), dtype=np.uint8)]
    d = Decoded(clip, 2, frames, rng.normal(size=6400).astype(np.float32), audio_status="silent", detail="note")
    store = DecodedStore(tmp_path / "kept", p.extract, p.data, keep=frozenset({"valid"}))
    assert store.save(d)
    back = store.load(clip)
    _same(back, d)
    assert back.wave.dtype == np.float32 and back.clip is clip
    (tmp_path / "b.mp4").write_bytes(b"clip b")
    train = Clip("b", "train", tmp_path / "b.mp4")  # another split: not kept
    assert not store.save(Decoded(train, 2, frames, None)) and store.load(train) is None
    assert not store.save(Decoded(clip, 0, visual_status="error", audio_status="error"))  # errors are not kept
    store.path(clip).write_bytes(b"truncated")
    assert store.load(clip) is None and "cannot be read" in caplog.text


slow = pytest.mark.slow  # the tests below decode the generated tiny dataset's clips


def _same(a, b) -> None:
    assert (a.n_steps, a.visual_status, a.audio_status, a.detail) == (b.n_steps, b.visual_status, b.audio_status,
                                                                      b.detail)
    assert len(a.frames) == len(b.frames) and all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    assert (a.wave is None) == (b.wave is None) and (a.wave is None or np.array_equal(a.wave, b.wave))


@slow
def test_a_kept_clip_reads_back_exactly_as_decoded_and_is_not_decoded_again(tiny_dataset, tmp_path, monkeypatch):
    p = load_params(None, profile="tiny")
    clips = list_clips(tiny_dataset)[:3]
    store = DecodedStore(tmp_path / "decoded", p.extract, p.data)
    first = decode_clips(clips, p.extract, p.data, True, True, store)  # decoded and kept
    assert all(store.path(c).is_file() for c in clips)
    calls = []
    monkeypatch.setattr(decode_module, "decode_clip", lambda *a: calls.append(a) or decode_clip(*a))
    again = decode_clips(clips, p.extract, p.data, True, True, store)
    assert calls == []  # read, not decoded
    for a, b, c in zip(first, again, clips):
        _same(a, b)
        _same(b, decode_clip(c, p.extract, p.data, True, True))
        assert b.clip is c and len(b.frames) == b.n_steps > 0 and b.frames[0].dtype == np.uint8
    # only a clip decoded with both its frames and its audio is kept, and only in the splits the store keeps
    only_audio = DecodedStore(tmp_path / "audio-only", p.extract, p.data)
    decode_clips(clips[:1], p.extract, p.data, False, True, only_audio)
    assert not only_audio.path(clips[0]).exists()
    everything = list_clips(tiny_dataset)
    valid = DecodedStore(tmp_path / "valid-only", p.extract, p.data, keep=frozenset({"valid"}))
    decode_clips(everything, p.extract, p.data, True, True, valid)
    assert {c.split for c in everything} > {"valid"}
    assert [c.id for c in everything if valid.path(c).is_file()] == [c.id for c in everything if c.split == "valid"]


@slow
def test_another_clip_or_decode_setting_misses(tiny_dataset, tmp_path):
    p = load_params(None, profile="tiny")
    clip = list_clips(tiny_dataset)[0]
    store = DecodedStore(tmp_path / "decoded", p.extract, p.data)
    decode_clips([clip], p.extract, p.data, True, True, store)
    assert store.load(clip) is not None
    for override in ("extract.frame_max_side=64", "extract.fps=4", "data.silence_dbfs=-30"):
        q = load_params(None, profile="tiny", overrides=[override])
        assert DecodedStore(tmp_path / "decoded", q.extract, q.data).load(clip) is None, override
    # keeping decodes or not, and how many workers decode, change nothing read back
    q = load_params(None, profile="tiny", overrides=["extract.decode_workers=0", "extract.keep_decoded=[]"])
    assert DecodedStore(tmp_path / "decoded", q.extract, q.data).load(clip) is not None
    # keyed by content, not by name: the same bytes elsewhere hit, other bytes under the clip's name miss
    moved = tmp_path / "clip.mp4"
    shutil.copy(clip.path, moved)
    assert DecodedStore(tmp_path / "decoded", p.extract, p.data).load(Clip(clip.id, clip.split, moved)) is not None
    shutil.copy(list_clips(tiny_dataset)[1].path, moved)
    assert DecodedStore(tmp_path / "decoded", p.extract, p.data).load(Clip(clip.id, clip.split, moved)) is None

@slow
def test_a_damaged_kept_file_is_decoded_again(tiny_dataset, tmp_path, caplog):
    p = load_params(None, profile="tiny")
    clip = list_clips(tiny_dataset)[0]
    store = DecodedStore(tmp_path / "decoded", p.extract, p.data)
    decode_clips([clip], p.extract, p.data, True, True, store)
    path = store.path(clip)
    path.write_bytes(path.read_bytes()[:100])
    assert store.load(clip) is None and "cannot be read" in caplog.text
    d = decode_clips([clip], p.extract, p.data, True, True, store)[0]  # decoded again and kept again
    _same(store.load(clip), d)
