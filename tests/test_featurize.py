"""The one featurize path (decode -> grid -> damage -> face crop -> encode): robustness' decode-once shortcut and
`emi predict` compute the numbers `emi extract` stored, with real (tiny-profile) encoders."""

import numpy as np
import pytest

from emi.config import MODALITIES, load_params
from emi.data.dataset import Clip, list_clips, split_ids, transcript_texts
from emi.data.store import load_features
from emi.encoders.base import resolve_device, resolve_dtype
from emi.encoders.registry import load_encoders
from emi.featurize import FaceCropper, Featurizer, decode_clip
from emi.robustness import condition_features, conditions, damaged_rows
from emi.stages.extract import extract
from tests.conftest import transcripts_from_script


@pytest.mark.slow
def test_fast_damage_path_matches_clip_features(tiny_dataset, tmp_path):
    """Decoding once and re-encoding only the damaged modality gives what the Featurizer gives for damaged clips."""
    params = load_params(None, profile="tiny")
    valid = set(split_ids(tiny_dataset)["valid"])
    clips = [c for c in list_clips(tiny_dataset) if c.id in valid]
    texts = transcript_texts(transcripts_from_script(tiny_dataset, tmp_path / "transcripts.csv"))
    device = resolve_device(params.extract.device)
    encoders = load_encoders(params.extract, device, resolve_dtype(params.extract.dtype, device), set(MODALITIES))
    featurizer = Featurizer(params.extract, params.data, encoders)
    damages = conditions(params.evaluate.robustness)
    rows = damaged_rows(len(clips), 0.5, params.seed)
    assert 0 < len(rows) < len(clips)
    # chunks of 2 clips: the per-condition noise stream must run on across chunks as it does over one call
    fast = condition_features(featurizer, clips, texts, damages, rows, params.seed, chunk_size=2)
    clean = featurizer(clips, texts, rng=np.random.default_rng(params.seed))
    for name, damage in damages.items():
        ref = featurizer([clips[i] for i in rows], texts, damage=damage,
                         rng=np.random.default_rng(params.seed)) if damage else None
        for i in range(len(clips)):
            want, j = (ref, list(rows).index(i)) if damage and i in rows else (clean, i)
            got = fast[name]
            np.testing.assert_allclose(got.visual[i], want.visual[j], atol=1e-5, err_msg=f"{name} V {i}")
            np.testing.assert_allclose(got.audio[i], want.audio[j], atol=1e-5, err_msg=f"{name} A {i}")
            np.testing.assert_allclose(got.text[i], want.text[j], atol=1e-5, err_msg=f"{name} T {i}")
            assert (got.mask[i] == want.mask()[j]).all(), name


@pytest.mark.slow
def test_predict_features_equal_stored_training_features_with_face_crop(tiny_dataset, tmp_path):
    """extract.face_crop: true. What `emi predict` computes for a clip (clips named by their path, a batch of its
    own, fresh encoders) equals what `emi extract` stored for training: features and the modality mask, a clip
    without a detected face included (its visual modality masked in both: predict once marked it usable)."""
    params = load_params(None, profile="tiny", overrides=["extract.face_crop=true"])
    cfg = params.extract
    texts = transcript_texts(transcripts_from_script(tiny_dataset, tmp_path / "transcripts.csv"))
    extract(params, tiny_dataset, tmp_path / "transcripts.csv", tmp_path / "features", None, show_progress=False)
    stored = load_features(tmp_path / "features")
    by_id = {c.id: c for c in list_clips(tiny_dataset)}

    # the face detector really runs on the generated clips: some clips have a face, some (turned away, small) none
    cropper = FaceCropper(cfg.face_margin)
    found = {i: cropper.crop(decode_clip(by_id[i], cfg, params.data, True, False))[1] for i in stored.ids}
    with_face = [i for i in stored.ids if found[i]]
    without = [i for i in stored.ids if found[i] is False]
    assert with_face and without, found
    assert all(stored.mask[stored.ids.index(i), 0] for i in with_face)
    assert not any(stored.mask[stored.ids.index(i), 0] for i in without)  # no face: visual masked in training

    # as predict_videos does: Clip(str(path), "predict", path), texts by that id, encoders loaded afresh
    chosen = with_face[:2] + without[:1]
    clips = [Clip(str(by_id[i].path), "predict", by_id[i].path) for i in chosen]
    device = resolve_device(cfg.device)
    encoders = load_encoders(cfg, device, resolve_dtype(cfg.dtype, device), set(MODALITIES), None)
    feats = Featurizer(cfg, params.data, encoders)(clips, {c.id: texts[i] for c, i in zip(clips, chosen)})
    mask = feats.mask()
    for k, clip_id in enumerate(chosen):
        j = stored.ids.index(clip_id)
        np.testing.assert_allclose(feats.visual[k], stored.visual[j], atol=1e-4, err_msg=f"{clip_id} V")
        np.testing.assert_allclose(feats.audio[k], stored.audio[j], atol=1e-4, err_msg=f"{clip_id} A")
        np.testing.assert_allclose(feats.text[k], stored.text[j], atol=1e-4, err_msg=f"{clip_id} T")
        assert (mask[k] == stored.mask[j]).all(), (clip_id, mask[k], stored.mask[j])
    assert feats.status["visual"] == ["ok", "ok", "no_face"]
    assert "visual (no_face)" in feats.notes()[2] and "visual" not in feats.notes()[0]

    # and the crop changed what the visual encoder saw: whole frames give other features for a clip with a face
    whole = Featurizer(cfg.model_copy(update={"face_crop": False}), params.data, encoders)(clips[:1], {},
                                                                                           ("visual",))
    assert whole.visual[0].shape == feats.visual[0].shape
    assert not np.allclose(whole.visual[0], feats.visual[0], atol=1e-3)
