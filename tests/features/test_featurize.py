"""The one featurize path (decode -> grid -> damage -> face crop -> encode): robustness' decode-once shortcut and
`emi predict` compute the numbers `emi extract` stored, with real (tiny-profile) encoders."""

import numpy as np
import pytest

from emi.config import MODALITIES, load_params
from emi.features.cues import AUDIO_CUES, VISUAL_CUES
from emi.data.dataset import Clip, list_clips, split_ids, transcript_texts
from emi.features.store import load_features
from emi.encoders.base import resolve_device, resolve_dtype
from emi.encoders.registry import load_encoders
from emi.features.decode import FaceCropper, decode_clip
from emi.features.featurize import Featurizer
from emi.config import DAMAGE_KINDS
from emi.evaluation.robustness import condition_features, damaged_rows, damages, mixed_damage
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
    kinds = damages(params.evaluate.robustness)
    rows = damaged_rows(len(clips), 0.5, params.seed)
    assert 0 < len(rows) < len(clips)
    plan = {"clean": {}, **{kind: dict.fromkeys(rows.tolist(), kind) for kind in DAMAGE_KINDS}}
    clean = featurizer(clips, texts, rng=np.random.default_rng(params.seed))
    # text comes from what extract stored (here: the same encoder's vectors), so the fast path has no text encoder
    stored_text = {c: clean.text[i] if clean.mask()[i, 2] else None for i, c in enumerate(clean.ids)}
    assert any(v is not None for v in stored_text.values())
    no_text = Featurizer(params.extract, params.data, {m: encoders[m] for m in ("visual", "audio")})
    # chunks of 2 clips: the per-condition noise stream must run on across chunks as it does over one call
    fast = condition_features(no_text, clips, stored_text, kinds, plan, params.seed, chunk_size=2)
    for name, damage in {"clean": None, **kinds}.items():
        ref = featurizer([clips[i] for i in rows], texts, damage=damage,
                         rng=np.random.default_rng(params.seed)) if damage else None
        for i in range(len(clips)):
            want, j = (ref, list(rows).index(i)) if damage and i in rows else (clean, i)
            got = fast[name]
            np.testing.assert_allclose(got.visual[i], want.visual[j], rtol=1e-5, atol=1e-5, err_msg=f"{name} V {i}")
            np.testing.assert_allclose(got.audio[i], want.audio[j], rtol=1e-5, atol=1e-5, err_msg=f"{name} A {i}")
            np.testing.assert_allclose(got.text[i], want.text[j], atol=1e-5, err_msg=f"{name} T {i}")
            assert (got.mask[i] == want.mask()[j]).all(), name
            for m in ("visual", "audio"):
                np.testing.assert_allclose(got.cues[m][i], want.cues[m][j], atol=1e-5, err_msg=f"{name} {m} cues {i}")
    # the robustness conditions from clips decoded once and kept (emi.features.decoded): the same numbers, bit for bit
    from emi.features.decoded import DecodedStore

    kept = Featurizer(params.extract, params.data, no_text.encoders, DecodedStore(tmp_path / "decoded", params.extract,
                                                                                  params.data))
    for _ in range(2):  # the first pass decodes and keeps, the second reads
        from_kept = condition_features(kept, clips, stored_text, kinds, plan, params.seed, chunk_size=2)
        for name in fast:
            for m in ("visual", "audio"):
                assert all(np.array_equal(a, b) for a, b in zip(getattr(from_kept[name], m), getattr(fast[name], m)))
    assert len(list((tmp_path / "decoded").rglob("*.npz"))) == len(clips)
    # the cues see the damage: a covered lower face is darker, a missing track reads zero, noise is flat
    dark, level, flat = VISUAL_CUES.index("dark_fraction"), AUDIO_CUES.index("level"), AUDIO_CUES.index("flatness")
    for i in rows:
        assert fast["occluded_face"].cues["visual"][i][:, dark].mean() > fast["clean"].cues["visual"][i][:, dark].mean()
        assert (fast["missing_audio"].cues["audio"][i] == 0).all()
        if fast["clean"].mask[i, 1]:
            assert fast["noisy_audio"].cues["audio"][i][:, flat].mean() > fast["clean"].cues["audio"][i][:, flat].mean()
            assert fast["clean"].cues["audio"][i][:, level].max() > 0
    # the mixed condition: each chosen clip carries its own damage kind, the others stay clean
    mixed = mixed_damage(len(clips), 0.5, params.seed)
    got = condition_features(no_text, clips, stored_text, kinds, {"mixed": mixed}, params.seed, chunk_size=2)["mixed"]
    for i in range(len(clips)):
        kind = mixed.get(i)
        want = featurizer([clips[i]], texts, damage=kinds[kind], rng=np.random.default_rng(params.seed)) if (
            kind and kind != "noisy_audio") else None  # noise: drawn from the kind's stream, not a fresh one
        if kind == "noisy_audio":
            assert not np.allclose(got.audio[i], clean.audio[i], atol=1e-3), i
            continue
        ref, j = (want, 0) if want is not None else (clean, i)
        np.testing.assert_allclose(got.visual[i], ref.visual[j], atol=1e-5, err_msg=f"mixed V {i}")
        np.testing.assert_allclose(got.text[i], ref.text[j], atol=1e-5, err_msg=f"mixed T {i}")
        assert (got.mask[i] == ref.mask()[j]).all(), (i, kind)


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
        for m in ("visual", "audio"):
            np.testing.assert_allclose(feats.cues[m][k], stored.cues[m][j], atol=1e-4, err_msg=f"{clip_id} {m} cues")
        assert (mask[k] == stored.mask[j]).all(), (clip_id, mask[k], stored.mask[j])
    assert feats.status["visual"] == ["ok", "ok", "no_face"]
    face_found = VISUAL_CUES.index("face_found")
    assert (feats.cues["visual"][2][:, face_found] == 0).all() and feats.cues["visual"][0][:, face_found].max() == 1
    assert "visual (no_face)" in feats.notes()[2] and "visual" not in feats.notes()[0]

    # and the crop changed what the visual encoder saw: whole frames give other features for a clip with a face
    whole = Featurizer(cfg.model_copy(update={"face_crop": False}), params.data, encoders)(clips[:1], {},
                                                                                           ("visual",))
    assert whole.visual[0].shape == feats.visual[0].shape
    assert not np.allclose(whole.visual[0], feats.visual[0], atol=1e-3)


def _decode(clip, params, **extract):
    cfg = params.extract.model_copy(update=extract)
    return decode_clip(clip, cfg, params.data, want_frames=True, want_audio=True)


def test_a_container_declaring_1000_fps_is_sampled_by_its_timestamps(tiny_dataset, tmp_path):
    from tests.conftest import remux_with_nominal_rate

    params = load_params(None, profile="tiny")
    clip = list_clips(tiny_dataset)[0]
    bogus = remux_with_nominal_rate(clip.path, tmp_path / clip.path.name)
    import av

    with av.open(str(bogus)) as c:
        assert float(c.streams.video[0].average_rate) == 1000.0
        assert c.streams.video[0].start_time > 0  # Matroska shifted the video past the audio's priming samples
    a, b = _decode(clip, params), _decode(Clip(clip.id, clip.split, bogus), params)
    assert b.visual_status == "ok" and b.n_steps == a.n_steps > 0
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    # the audio track keeps its length on the grid (Matroska keeps the AAC priming samples MP4's edit list trims)
    assert b.audio_status == "ok" and b.wave.shape == a.wave.shape


def test_a_clip_over_max_steps_is_featurized_on_steps_spread_over_it(tiny_dataset, tmp_path):
    from emi.data.media import AUDIO_SAMPLE_RATE, step_times
    from emi.features.decode import grid_audio
    from tests.conftest import concat_clip

    params = load_params(None, profile="tiny")
    clip = list_clips(tiny_dataset)[0]
    long = Clip(clip.id, clip.split, concat_clip(clip.path, tmp_path / clip.path.name, times=3))
    full = _decode(long, params)
    assert full.n_steps > 40 and full.detail == ""
    short = _decode(long, params, max_steps=12)
    assert short.n_steps == 12 and "featurized on 12 of its" in short.detail and short.visual_status == "ok"
    steps = step_times(full.n_steps, params.extract.fps, 12)
    assert all(np.array_equal(short.frames[j], full.frames[k]) for j, k in enumerate(steps))
    step_len = AUDIO_SAMPLE_RATE // int(params.extract.fps)
    assert short.wave.size == 12 * step_len
    for j, k in enumerate(steps):  # each chosen step's own audio, back to back
        np.testing.assert_array_equal(short.wave[j * step_len:(j + 1) * step_len],
                                      full.wave[k * step_len:(k + 1) * step_len])
    np.testing.assert_array_equal(grid_audio(full.wave, np.arange(full.n_steps), full.n_steps, 5.0), full.wave)


def test_organiser_face_images_can_be_the_visual_source(dataset_copy):
    import cv2

    params = load_params(None, profile="tiny")
    clip = list_clips(dataset_copy)[0]
    faces = dataset_copy / "face_images" / clip.id
    faces.mkdir(parents=True)
    for k in range(4):
        cv2.imwrite(str(faces / f"{k}.jpg"), np.full((40, 30, 3), 50 * k, np.uint8))
    (faces / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    d = _decode(clip, params, visual_source="face_images")
    assert d.visual_status == "ok" and len(d.frames) == d.n_steps == _decode(clip, params).n_steps
    assert d.frames[0].shape == (40, 30, 3) and int(d.frames[-1][0, 0, 0]) == 150
    assert d.wave is not None and d.audio_status == "ok"  # audio still comes from the clip
    other = list_clips(dataset_copy)[1]  # no face_images folder: the visual modality is masked, not an error
    d = _decode(other, params, visual_source="face_images")
    assert d.visual_status == "no_face_images" and d.frames == [] and d.audio_status == "ok"
