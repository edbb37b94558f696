"""``emi augment`` on the tiny dataset with the real encoders: which clips get a copy, what each damage does to the
copy's features and masks, determinism, resuming, and Stage II training on the copies."""

import numpy as np
import pandas as pd
import pytest

from emi.train.augmentation import plan_copies, plan_shards
from emi.config import DAMAGE_KINDS
from emi.data.dataset import Clip, split_ids
from emi.paths import AUGMENTED_FILE, COPIES_FILE, COPY_SEPARATOR
from emi.stages.augment import augment
from emi.train.fusion import split_data, with_copies
from emi.train.projection import load_aligned
from tests.conftest import tiny


def test_the_plan_copies_a_seeded_share_of_training_clips_with_one_damage_each():
    a = tiny("stage2.augment.fraction=0.5").stage2.augment
    ids = [f"{i:05d}" for i in range(40)]
    plan = plan_copies(ids, a, seed=7)
    assert plan == plan_copies(ids, a, seed=7)  # deterministic for a seed
    assert plan != plan_copies(ids, a, seed=8)
    assert len(plan) == 20 and len({c.source for c in plan}) == 20 and {c.source for c in plan} <= set(ids)
    assert all(c.kind in DAMAGE_KINDS and c.id == f"{c.source}{COPY_SEPARATOR}{c.kind}" for c in plan)
    low, high = a.noise_snr_db
    assert all((low <= c.snr_db <= high) if c.kind == "noisy_audio" else c.snr_db is None for c in plan)
    assert plan_copies(ids, tiny("stage2.augment.fraction=0").stage2.augment, seed=7) == []
    only = plan_copies(ids, tiny("stage2.augment.kinds=[missing_text]").stage2.augment, seed=7)
    assert {c.kind for c in only} == {"missing_text"}


def _receipts(tmp_path, ids: list[str], vectors: dict) -> list[dict[str, str]]:
    """The shard receipts augment would write for copies of ``ids`` (one-byte stand-in clips and Stage-I model)."""
    params = tiny("stage2.augment.fraction=1.0")
    for i in ids:
        (tmp_path / f"{i}.mp4").write_bytes(i.encode())
    (tmp_path / "alignment.pt").write_bytes(b"stage I")
    clips = {i: Clip(i, "train", tmp_path / f"{i}.mp4") for i in ids}
    copies = plan_copies(ids, params.stage2.augment, params.seed)
    return plan_shards(params, copies, clips, vectors, tmp_path / "work", tmp_path / "alignment.pt").keys


def test_a_shard_receipt_follows_the_stored_text_vectors_of_its_clips(tmp_path):
    ids = ["00001", "00002"]
    vectors = {i: np.full(4, k, np.float32) for k, i in enumerate(ids)}
    before = _receipts(tmp_path, ids, vectors)
    assert before == _receipts(tmp_path, ids, {i: v.copy() for i, v in vectors.items()})
    assert before != _receipts(tmp_path, ids, {**vectors, "00002": vectors["00002"] + 1e-3})  # the text encoder changed
    assert before != _receipts(tmp_path, ids, {**vectors, "00002": None})  # the clip lost its text


def test_a_shard_receipt_follows_the_audio_encoders_code_revision(tmp_path, monkeypatch):
    import emi.train.augmentation as augmentation

    before = _receipts(tmp_path, ["00001"], {})
    real = augmentation.feature_revision
    monkeypatch.setattr(augmentation, "feature_revision", lambda m, kind: real(m, kind) + (m == "audio"))
    assert _receipts(tmp_path, ["00001"], {}) != before


@pytest.fixture(scope="module")
def augmented(tiny_dataset, tiny_features, tiny_aligned, tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    params = tiny("stage2.augment.fraction=1.0")
    result = augment(params, tiny_dataset, tiny_features, tiny_aligned.model_path, root / "augmented",
                     show_progress=False)
    return params, root, result


@pytest.mark.slow  # real encoders: the tiny dataset's extract, Stage I and augment
def test_only_training_clips_are_copied_and_each_damage_shows_in_the_features(augmented, tiny_dataset,
                                                                               tiny_aligned):
    _, root, result = augmented
    copies = pd.read_csv(root / "augmented" / COPIES_FILE, dtype={"source": str})
    train = split_ids(tiny_dataset)["train"]
    assert sorted(copies["source"]) == sorted(train) and (copies["status"] == "ok").all()
    assert result.made == len(train) and result.problems == {}
    data, splits = load_aligned(root / "augmented" / AUGMENTED_FILE, "encoder")
    assert data.ids == copies["id"].tolist() and set(splits) == {"train"}
    # the clean clips' features, standardized by the same Stage-I model
    clean, _ = load_aligned(tiny_aligned.aligned_path, "encoder")
    row = {c: k for k, c in enumerate(clean.ids)}
    kinds = dict(zip(copies["id"], copies["kind"]))
    seen = set()
    for i, clip in enumerate(data.ids):
        kind, j = kinds[clip], row[clip.split(COPY_SEPARATOR)[0]]
        seen.add(kind)
        v, a, t = data.mask[i]
        assert (v, a, t) == (bool(clean.mask[j, 0]), kind != "missing_audio", kind != "missing_text"), clip
        same_v = np.allclose(data.visual[i], clean.visual[j], atol=1e-3)
        same_a = np.allclose(data.audio[i], clean.audio[j], atol=1e-3)
        assert same_v == (kind != "occluded_face"), clip  # damage changes what it touches, nothing else
        if kind in ("occluded_face", "missing_text"):
            assert same_a, clip
        if kind == "noisy_audio":
            assert not same_a, clip
    assert len(seen) >= 2, seen


@pytest.mark.slow
def test_a_rerun_recomputes_nothing_and_a_fresh_run_writes_the_same_bytes(augmented, tiny_dataset, tiny_features,
                                                                         tiny_aligned, tmp_path):
    params, root, _ = augmented
    again = augment(params, tiny_dataset, tiny_features, tiny_aligned.model_path, root / "augmented",
                    show_progress=False)
    assert again.shards_done_now == 0
    fresh = augment(params, tiny_dataset, tiny_features, tiny_aligned.model_path, tmp_path / "augmented",
                    show_progress=False)
    assert fresh.shards_done_now > 0
    for name in (AUGMENTED_FILE, COPIES_FILE):
        assert (tmp_path / "augmented" / name).read_bytes() == (root / "augmented" / name).read_bytes(), name


@pytest.mark.slow
def test_stage_ii_trains_on_the_split_and_the_copies_with_their_source_labels(augmented, tiny_dataset,
                                                                              tiny_aligned):
    params, root, _ = augmented
    parts = split_data(tiny_aligned.aligned_path, tiny_dataset, params.stage2.inputs)
    train = with_copies(parts["train"], root / "augmented" / AUGMENTED_FILE, params.stage2.inputs)
    n = len(parts["train"])
    assert len(train) == 2 * n and train.ids[:n] == parts["train"].ids
    label = dict(zip(parts["train"].ids, parts["train"].labels.tolist()))
    for i in range(n, len(train)):
        assert train.labels[i].tolist() == label[train.ids[i].split(COPY_SEPARATOR)[0]]
        assert train.visual[i].shape[1] == parts["train"].visual[0].shape[1]
    batch = train.batch(list(range(len(train))))
    assert batch["v"].shape[0] == 2 * n and np.isfinite(batch["v"].numpy()).all()
    assert with_copies(parts["train"], root / "absent.npz", params.stage2.inputs) is parts["train"]


@pytest.mark.slow
def test_no_copies_asked_for_writes_the_table_alone(tiny_dataset, tiny_aligned, tmp_path):
    # nothing to encode: neither the encoders nor the feature store are read (there is none here)
    result = augment(tiny("stage2.augment.fraction=0"), tiny_dataset, tmp_path / "no-store",
                     tiny_aligned.model_path, tmp_path / "augmented", show_progress=False)
    assert result.made == 0 and not (tmp_path / "augmented" / AUGMENTED_FILE).exists()
    assert pd.read_csv(tmp_path / "augmented" / COPIES_FILE).empty
