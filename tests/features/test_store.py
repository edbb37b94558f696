"""The feature store: shards with receipts, the index, reading features back."""

import json
from pathlib import Path

import numpy as np
import pytest

from emi.config import MODALITIES
from emi.data.dataset import Clip
from emi.features.store import (INDEX_FILE, MANIFEST_FILE, ShardSet, data_fingerprint, features_fingerprint,
                                load_features, load_shard, pack, remove_leftovers, save_shard, shard_done, shard_path)
from emi.utils import write_json, write_text

DIMS = {"visual": 4, "audio": 3, "text": 2}


def write_store(out: Path, shards: list[list[tuple[str, str, int, str]]], cues: bool = False) -> dict:
    """A feature store by hand: per shard, clips as (id, split, steps, audio status); visual[k] = clip number;
    with ``cues``, visual and audio shards hold 2 cues per step: (clip number + 0.5, step)."""
    paths = {m: [shard_path(out, m, i) for i in range(len(shards))] for m in MODALITIES}
    clip_shards, expected, n = [], {}, 0
    for i, shard in enumerate(shards):
        ids = [c[0] for c in shard]
        v = [np.full((steps, DIMS["visual"]), n + k, np.float32) for k, (_, _, steps, _) in enumerate(shard)]
        a = [np.full((steps, DIMS["audio"]), -(n + k), np.float32) for k, (_, _, steps, _) in enumerate(shard)]
        t = [np.full((1, DIMS["text"]), 10 * (n + k), np.float32) for k in range(len(shard))]
        for clip, vv, aa, tt in zip(ids, v, a, t):
            expected[clip] = (vv, aa, tt[0])
        n += len(shard)
        status = {"visual": ["ok"] * len(shard), "audio": [c[3] for c in shard], "text": ["ok"] * len(shard)}
        c = [np.stack([np.full(steps, n - len(shard) + k + 0.5), np.arange(steps)], 1).astype(np.float32)
             for k, (_, _, steps, _) in enumerate(shard)] if cues else None
        for m, arrays in (("visual", v), ("audio", a), ("text", t)):
            save_shard(paths[m][i], f"key-{m}-{i}", pack(ids, arrays, status[m], [""] * len(shard),
                                                         c if m != "text" else None), {"modality": m})
        clip_shards.append([Clip(c[0], c[1], out / "raw" / f"{c[0]}.mp4") for c in shard])
    keys = [{m: f"key-{m}-{i}" for m in MODALITIES} for i in range(len(shards))]
    index = ShardSet(out, clip_shards, keys, paths, {m: [] for m in MODALITIES}).index()
    write_text(out / INDEX_FILE, index.to_csv(index=False))
    write_json(out / MANIFEST_FILE, {"fps": 5, "dims": DIMS, "encoders": [{"role": "extract.visual"}]})
    return expected


def test_a_shard_is_done_only_with_its_matching_receipt(tmp_path):
    path = shard_path(tmp_path, "visual", 3)
    assert path == tmp_path / "visual" / "shard-00003.npz"
    arrays = pack(["a", "b"], [np.ones((2, 4)), np.zeros((1, 4))], ["ok", "no_audio"], ["", "x"])
    save_shard(path, "fp-1", arrays, {"clips": 2})
    assert json.loads(path.with_suffix(".json").read_text()) == {"fingerprint": "fp-1", "clips": 2}
    assert shard_done(path, "fp-1") and not shard_done(path, "fp-2"), "a changed input must redo the shard"
    back = load_shard(path)
    assert back["ids"].tolist() == ["a", "b"] and back["lengths"].tolist() == [2, 1]
    assert back["data"].dtype == np.float32 and back["data"].shape == (3, 4)
    assert back["status"].tolist() == ["ok", "no_audio"] and back["detail"].tolist() == ["", "x"]
    path.with_suffix(".json").write_text("{not json")
    assert not shard_done(path, "fp-1"), "a damaged receipt means not done"
    path.with_suffix(".json").unlink()
    assert not shard_done(path, "fp-1"), "a shard without its receipt (killed before it) is not done"
    assert not shard_done(shard_path(tmp_path, "audio", 0), "fp-1")


def test_pack_of_no_steps_keeps_the_dim():
    packed = pack(["a"], [np.zeros((0, 5), np.float32)], ["error"], ["bad"])
    assert packed["data"].shape == (0, 5) and packed["lengths"].tolist() == [0]


def test_leftovers_of_a_killed_or_larger_run_are_removed(tmp_path):
    keep = {m: [shard_path(tmp_path, m, 0)] for m in MODALITIES}
    for m in MODALITIES:
        save_shard(shard_path(tmp_path, m, 0), "k", pack(["a"], [np.ones((1, 2))], ["ok"], [""]), {})
        save_shard(shard_path(tmp_path, m, 1), "k", pack(["b"], [np.ones((1, 2))], ["ok"], [""]), {})
        (tmp_path / m / ".shard-00000.npz.tmp123.npz").write_bytes(b"half")
    remove_leftovers(tmp_path, keep)
    for m in MODALITIES:
        assert sorted(p.name for p in (tmp_path / m).iterdir()) == ["shard-00000.json", "shard-00000.npz"]


def test_load_features_reads_every_ok_clip_back_from_the_shards(tmp_path):
    expected = write_store(tmp_path, [[("00001", "train", 3, "ok"), ("00002", "train", 2, "no_audio")],
                                      [("00003", "valid", 4, "ok")]])
    index = (tmp_path / INDEX_FILE).read_text().splitlines()
    assert index[0].startswith("id,split,shard,offset,audio_offset,n_steps")
    fs = load_features(tmp_path)
    assert fs.ids == ["00001", "00002", "00003"] and fs.splits == ["train", "train", "valid"]
    assert fs.dims == DIMS and fs.encoders == [{"role": "extract.visual"}]
    for i, clip in enumerate(fs.ids):
        v, a, t = expected[clip]
        np.testing.assert_array_equal(fs.visual[i], v)
        np.testing.assert_array_equal(fs.audio[i], a)
        np.testing.assert_array_equal(fs.text[i], t)
    assert fs.mask.tolist() == [[True, True, True], [True, False, True], [True, True, True]]
    valid = load_features(tmp_path, splits=("valid",))
    assert valid.ids == ["00003"] and valid.visual[0].shape == (4, DIMS["visual"])


def test_text_vectors_are_each_clips_stored_text_and_none_without_usable_text(tmp_path):
    expected = write_store(tmp_path, [[("00001", "train", 3, "ok"), ("00002", "valid", 2, "ok")]])
    fs = load_features(tmp_path)
    fs.mask[1, 2] = False  # as a clip with an empty transcript is stored
    vectors = fs.text_vectors()
    assert set(vectors) == {"00001", "00002"} and vectors["00002"] is None
    np.testing.assert_array_equal(vectors["00001"], expected["00001"][2])


def test_a_clip_that_errored_is_indexed_but_not_loaded(tmp_path):
    write_store(tmp_path, [[("00001", "train", 3, "ok"), ("00002", "train", 0, "error")]])
    fs = load_features(tmp_path)
    assert fs.ids == ["00001"] and fs.text.shape == (1, DIMS["text"])
    assert "00002" in (tmp_path / INDEX_FILE).read_text()


def test_fingerprints_follow_the_receipts_and_the_split_files(tmp_path):
    out = tmp_path / "features"
    write_store(out, [[("00001", "train", 3, "ok")]])
    before = features_fingerprint(out)
    assert features_fingerprint(out) == before
    receipt = shard_path(out, "text", 0).with_suffix(".json")
    receipt.write_text(json.dumps({"fingerprint": "other"}))
    assert features_fingerprint(out) != before, "other text features must give another fingerprint"

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train_split.csv").write_text("Filename\n00001\n")
    key, hashes = data_fingerprint(raw, out)
    assert set(hashes) == {"train_split.csv", "features/index.csv"}
    (raw / "train_split.csv").write_text("Filename\n00002\n")
    assert data_fingerprint(raw, out)[0] != key


def test_features_stay_in_the_shards_until_a_clip_is_read(tmp_path):
    """What makes a 12,660-clip training run hold one batch: the loaded set keeps file positions, not arrays."""
    from emi.data.sequences import Joined, Ragged, npz_arrays, take

    expected = write_store(tmp_path, [[("00001", "train", 3, "ok"), ("00002", "train", 2, "ok")],
                                      [("00003", "valid", 4, "ok")]])
    fs = load_features(tmp_path)
    assert isinstance(fs.visual, Ragged) and not any(isinstance(v, np.ndarray) for v in vars(fs.visual).values())
    assert fs.visual.lengths() == [3, 2, 4]
    offset, dtype, shape, fortran = npz_arrays(shard_path(tmp_path, "visual", 0))["data"]
    assert (dtype, shape, fortran) == (np.dtype(np.float32), (5, DIMS["visual"]), False)
    raw = shard_path(tmp_path, "visual", 0).read_bytes()  # the rows lie in the file where npz_arrays says
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32, 5 * 4, offset).reshape(5, 4)[3:],
                                  expected["00002"][0])
    picked = take(fs.visual, [2, 0])
    assert isinstance(picked, Ragged) and [x.shape[0] for x in picked] == [4, 3]
    np.testing.assert_array_equal(picked[0], expected["00003"][0])
    both = Joined([fs.visual, fs.audio])
    assert both[1].shape == (2, DIMS["visual"] + DIMS["audio"])
    np.testing.assert_array_equal(take(both, [1])[0][:, 4:], expected["00002"][1])
    assert take([np.ones(1), np.zeros(1)], [1])[0].tolist() == [0.0]  # plain lists stay lists


def test_reliability_cues_are_stored_beside_the_features_and_read_back_per_clip(tmp_path):
    write_store(tmp_path / "with", [[("00001", "train", 3, "ok"), ("00002", "valid", 2, "no_audio")],
                                    [("00003", "train", 4, "ok")]], cues=True)
    fs = load_features(tmp_path / "with")
    assert set(fs.cues) == {"visual", "audio"}
    for i, clip in enumerate(fs.ids):
        for m in ("visual", "audio"):
            want = np.stack([np.full(fs.visual[i].shape[0], int(clip) - 1 + 0.5), np.arange(fs.visual[i].shape[0])], 1)
            np.testing.assert_array_equal(fs.cues[m][i], want)
    assert [c.shape[0] for c in load_features(tmp_path / "with", ("train",)).cues["audio"]] == [3, 4]
    write_store(tmp_path / "without", [[("00001", "train", 3, "ok")]])
    assert load_features(tmp_path / "without").cues is None, "a store written before the cues reads without them"
    with pytest.raises(ValueError, match="one row per feature row"):
        pack(["a"], [np.ones((2, 4))], ["ok"], [""], [np.ones((3, 2))])
