"""Stage I with encoder fine-tuning (stage1.finetune.last_k_blocks > 0) on the tiny dataset, real encoders."""

import numpy as np
import pandas as pd
import pytest
import torch

from emi.config import MODALITIES, load_params
from emi.data.dataset import list_clips, transcript_texts
from emi.features.store import load_features
from emi.encoders.base import EncoderError
from emi.encoders.registry import load_encoders
from emi.features.featurize import Featurizer
from emi.stages.extract import extract
from emi.stages.stage1 import stage1
from emi.train.alignment import Stage1Error
from emi.train.projection import aligned_inputs, load_aligned, load_alignment, load_tuned_encoders
from emi.data.sequences import SequenceData
from emi.features import decode as decode_module
from emi.paths import decoded_dir
from tests.conftest import transcripts_from_script

pytestmark = pytest.mark.slow  # real encoders, extract and Stage I training in every test

CPU = torch.device("cpu")
# a small random-init wav2vec2 (2 transformer layers) stands in for the hub model: the same code path
W2V = ["extract.audio.kind=wav2vec2", "extract.audio.name=w2v-test", "extract.audio.pretrained=random",
       "extract.audio.allow_random_init=true", "extract.audio.dim=32", "extract.audio.window_s=4.0"]
TUNE = ["stage1.finetune.last_k_blocks=1", "stage1.finetune.modalities=[visual,audio]",
        "stage1.finetune.frames_per_clip=4", "stage1.finetune.audio_seconds=2.0"]


def params(*overrides: str):
    return load_params(None, overrides=[*W2V, *overrides], profile="tiny")


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tr = transcripts_from_script(tiny_dataset, root / "tr.csv")
    extract(params(), tiny_dataset, tr, root / "features", None, show_progress=False)
    return tiny_dataset, tr, root / "features"


@pytest.fixture(scope="module")
def tuned_run(inputs, tmp_path_factory):
    raw, _, features = inputs
    root = tmp_path_factory.mktemp("tuned")
    return stage1(params(*TUNE), features, root / "model", root / "aligned", raw, show_progress=False)


def test_only_the_last_k_blocks_change_and_the_model_carries_them(tuned_run):
    tuned = load_tuned_encoders(tuned_run.model_path)
    assert tuned["visual"]["blocks"] == ["blocks.3", "classifier"]  # FER: 4 Xception blocks + the classifier
    assert tuned["audio"]["blocks"] == ["encoder.layers.1"]  # the last of 2 transformer layers
    p = params()
    fresh = load_encoders(p.extract, CPU, torch.float32, {"visual", "audio"})
    again = load_encoders(p.extract, CPU, torch.float32, {"visual", "audio"}, tuned)
    for m, module in (("visual", "model"), ("audio", "model")):
        before = getattr(fresh[m], module).state_dict()
        after = getattr(again[m], module).state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed, f"{m}: fine-tuning changed nothing"
        assert changed <= set(tuned[m]["state"]), f"{m}: frozen weights changed: {sorted(changed - set(tuned[m]['state']))}"
    history = pd.read_csv(tuned_run.model_path.parent / "history.csv")
    assert len(history) == 2 and np.isfinite(history[["train_loss", "valid_loss"]].to_numpy()).all()


def test_aligned_features_are_what_predict_computes_with_the_tuned_encoders(inputs, tuned_run):
    raw, tr, features = inputs
    p = params(*TUNE)
    stored, _ = load_aligned(tuned_run.aligned_path, "both")
    # the encoder view is not the extract features: every clip went through the tuned blocks again
    before, (_, norm) = load_features(features), load_alignment(tuned_run.model_path)
    encoder_view = load_aligned(tuned_run.aligned_path, "encoder")[0]
    for m, seqs, tuned_seqs in (("V", before.visual, encoder_view.visual), ("A", before.audio, encoder_view.audio)):
        untuned = (seqs[0] - norm[m][0]) / norm[m][1]
        assert untuned.shape == tuned_seqs[0].shape and not np.allclose(untuned, tuned_seqs[0], atol=1e-3)
    clips = [c for c in list_clips(raw) if c.id in stored.ids[:3]]
    encoders = load_encoders(p.extract, CPU, torch.float32, set(MODALITIES), load_tuned_encoders(tuned_run.model_path))
    f = Featurizer(p.extract, p.data, encoders)(clips, transcript_texts(tr), rng=np.random.default_rng(p.seed))
    data = SequenceData(f.ids, f.visual, f.audio, f.text, f.mask(), None)
    fresh = aligned_inputs(data, tuned_run.model_path, "both")
    for i, clip in enumerate(clips):
        j = stored.ids.index(clip.id)
        np.testing.assert_allclose(fresh.visual[i], stored.visual[j], atol=1e-4)
        np.testing.assert_allclose(fresh.audio[i], stored.audio[j], atol=1e-4)


def test_same_seed_same_tuned_weights(inputs, tuned_run, tmp_path):
    raw, _, features = inputs
    again = stage1(params(*TUNE), features, tmp_path / "model", tmp_path / "aligned", raw, show_progress=False)
    a, b = load_tuned_encoders(tuned_run.model_path), load_tuned_encoders(again.model_path)
    for m in ("visual", "audio"):
        assert all(torch.equal(a[m]["state"][k], b[m]["state"][k]) for k in a[m]["state"])


def test_refuses_encoders_it_cannot_train_and_k_beyond_the_depth(inputs, tmp_path):
    raw, tr, _ = inputs
    whisper = load_params(None, profile="tiny", overrides=["stage1.finetune.last_k_blocks=1",
                                                          "stage1.finetune.modalities=[visual,audio]"])
    features = tmp_path / "features"
    extract(whisper, raw, tr, features, None, show_progress=False)
    with pytest.raises(Stage1Error, match="whisper-encoder runs in CTranslate2"):
        stage1(whisper, features, tmp_path / "m", tmp_path / "a", raw, show_progress=False)
    deep = load_params(None, profile="tiny", overrides=["stage1.finetune.last_k_blocks=9"])
    with pytest.raises(Stage1Error, match="last 9 blocks of an encoder with 4"):
        stage1(deep, features, tmp_path / "m", tmp_path / "a", raw, show_progress=False)


def test_a_model_tuned_for_one_encoder_refuses_another(tuned_run):
    other = params("extract.audio.dim=48")
    with pytest.raises(EncoderError, match="fine-tuned"):
        load_encoders(other.extract, CPU, torch.float32, {"audio"}, load_tuned_encoders(tuned_run.model_path))


def test_the_training_loop_decodes_no_clip(inputs, tmp_path, monkeypatch):
    """Stage I reads the train and valid clips from the kept decodes; those not kept are decoded once before the
    first epoch, never per epoch or step, and the tuned weights are the same either way. Test clips are decoded
    once, for the re-encode after training."""
    import shutil
    from collections import Counter

    raw, _, features = inputs
    calls: list[str] = []
    real = decode_module.decode_clip
    monkeypatch.setattr(decode_module, "decode_clip", lambda clip, *a: calls.append(clip.id) or real(clip, *a))
    p = params(*TUNE, "extract.decode_workers=0")  # loader in this process, so every decode is counted
    split = {c.id: c.split for c in list_clips(raw)}
    ids = load_features(features).ids
    runs = []
    shutil.rmtree(decoded_dir(features), ignore_errors=True)
    for k, before in enumerate(("none", "kept")):
        calls.clear()
        runs.append(stage1(p, features, tmp_path / f"m{k}", tmp_path / f"a{k}", raw, show_progress=False))
        assert max(Counter(calls).values()) == 1, before  # each clip decoded once at most, for 2 epochs
        test_ids = sorted(i for i in ids if split[i] == "test")
        want = {"kept": test_ids, "none": ids}[before]
        assert sorted(calls) == sorted(want), before
    first = load_tuned_encoders(runs[0].model_path)
    for run in runs[1:]:
        for m, entry in load_tuned_encoders(run.model_path).items():
            assert all(torch.equal(v, first[m]["state"][k]) for k, v in entry["state"].items()), m


def test_a_killed_fine_tuning_resumes_from_its_last_epoch_with_the_same_result(inputs, tmp_path):
    """A real `emi stage1` (fine-tuning, loader processes reading the kept clips) SIGKILLed after its first epoch's
    checkpoint, then run again: it resumes there and writes what an uninterrupted run writes, byte for byte."""
    import os
    import signal
    import subprocess
    import time

    from emi.paths import CHECKPOINT_FILE, work_dir
    from emi.train.loop import load_checkpoint
    from tests.conftest import EMI

    raw, _, features = inputs
    sets = [*W2V, *TUNE, "stage1.schedule.epochs=3", "stage1.schedule.cycle_epochs=3"]

    def cmd(out):
        return [EMI, "stage1", "--profile", "tiny", *[a for s in sets for a in ("--set", s)], "--features",
                str(features), "--raw", str(raw), "--out", str(out / "model"), "--aligned", str(out / "aligned"),
                "--no-progress"]

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    whole = subprocess.run(cmd(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    ckpt = work_dir(tmp_path / "killed" / "model") / CHECKPOINT_FILE
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(ckpt)["epoch"] < 3, "the kill should land before the last epoch"
    again = subprocess.run(cmd(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after epoch" in again.stderr
    for rel in ("model/alignment.pt", "model/history.csv", "aligned/aligned.npz"):
        assert (tmp_path / "killed" / rel).read_bytes() == (tmp_path / "whole" / rel).read_bytes(), rel
