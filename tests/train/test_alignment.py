"""Stage I pieces: contrastive pairs, retrieval, the feature standardization, aligned sequences and what inference
composes from a saved Stage-I model."""

import copy

import numpy as np
import torch

from emi.config import load_params
from emi.model import AlignmentModel
from emi.train.alignment import Alignment, _pair_masks, _train_epoch, _valid_loss, feature_norm, retrieval, save_alignment
from emi.train.projection import aligned_inputs, compose, load_aligned, load_alignment, project_clip, write_aligned
from emi.data.sequences import SequenceData

DIMS = {"V": 12, "A": 10, "T": 8}


def features(n: int = 8, seed: int = 0) -> SequenceData:
    """Encoder features of ``n`` clips (1-5 steps each), every modality usable."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, n)
    return SequenceData([f"{i:05d}" for i in range(n)],
                        [rng.standard_normal((L, DIMS["V"])).astype(np.float32) for L in lengths],
                        [rng.standard_normal((L, DIMS["A"])).astype(np.float32) for L in lengths],
                        rng.standard_normal((n, DIMS["T"])).astype(np.float32), np.ones((n, 3), bool), None)


def heads(seed: int = 0) -> AlignmentModel:
    torch.manual_seed(seed)
    return AlignmentModel(DIMS, embed_dim=6, temperature_init=0.07).eval()


def with_text(data: SequenceData, row: int, vector: np.ndarray) -> SequenceData:
    out = copy.deepcopy(data)
    out.text[row] = vector
    return out


def test_stage1_excludes_clips_without_text_from_pairs():
    data = features()
    data.mask[2, 2] = False  # clip 2: no usable transcript
    data.mask[4, 1] = False  # clip 4: no audio track
    vt, at = _pair_masks(data.batch(list(range(len(data)))))
    assert vt.tolist() == [True, True, False, True, True, True, True, True]
    assert at.tolist() == [True, True, False, True, False, True, True, True]

    # what the masks are for: clip 2's text vector takes part in no loss and no retrieval
    model = heads()
    loss, found = _valid_loss(model, data, 2), retrieval(model, data, 2)
    assert (found["v2t_pairs"], found["a2t_pairs"]) == (7, 6)
    junk = with_text(data, 2, np.full(DIMS["T"], 1e3, np.float32))
    assert _valid_loss(model, junk, 2) == loss, "a clip without text still formed a contrastive pair"
    assert retrieval(model, junk, 2) == found
    moved = with_text(data, 0, np.full(DIMS["T"], 1e3, np.float32))
    assert _valid_loss(model, moved, 2)["valid_loss_vt"] != loss["valid_loss_vt"], "a clip with text must count"

    # every transcript unusable: no pairs, so nothing to learn, but no crash and no NaN
    data.mask[:, 2] = False
    vt, at = _pair_masks(data.batch(list(range(len(data)))))
    assert not vt.any() and not at.any()
    assert all(np.isfinite(v) for v in _valid_loss(model, data, 2).values())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = _train_epoch(model, optimizer, data, 3, torch.Generator().manual_seed(0))
    assert losses == [0.0, 0.0, 0.0]
    assert all(p.isfinite().all() for p in model.parameters())


def test_retrieval_reports_pairs_and_chance():
    found = retrieval(heads(), features(n=5), 2)
    assert found["v2t_pairs"] == found["a2t_pairs"] == 5
    assert found["v2t_chance@1"] == 0.2 and found["v2t_chance@5"] == 1.0 and found["v2t_recall@5"] == 1.0
    assert 0 <= found["v2t_recall@1"] <= 1 and 0 <= found["a2t_recall@1"] <= 1


def test_feature_norm_standardizes_on_the_training_rows_only():
    data = features()
    rows = [0, 1, 3]
    norm = feature_norm(data, rows)
    frames = np.concatenate([data.visual[i] for i in rows])
    np.testing.assert_allclose(norm["V"][0], frames.mean(0), atol=1e-6)
    np.testing.assert_allclose(((frames - norm["V"][0]) / norm["V"][1]).std(0), 1.0, atol=1e-3)
    np.testing.assert_allclose(norm["T"][0], data.text[rows].mean(0), atol=1e-6)
    constant = features()
    constant.visual = [np.ones_like(v) for v in constant.visual]
    assert np.isfinite(1 / feature_norm(constant, rows)["V"][1]).all(), "a constant dimension must stay finite"


def test_compose_picks_or_concatenates_the_views():
    view = {f"{k}_{m}": np.full((2, 3), float(i)) for i, k in enumerate(("aligned", "encoder"))
            for m in ("visual", "audio", "text")}
    assert compose(view, "aligned")["audio"].tolist() == [[0.0] * 3] * 2
    both = compose(view, "both")
    assert both["visual"].shape == (2, 6) and both["visual"][0].tolist() == [0, 0, 0, 1, 1, 1], "aligned first"


def test_inference_composes_exactly_what_stage_two_was_trained_on(tmp_path):
    data = features()
    splits = ["train"] * 5 + ["valid"] * 3
    model, norm = heads(), feature_norm(data, range(5))
    path = write_aligned(model, norm, data, splits, tmp_path / "aligned" / "aligned.npz")
    p = load_params(None, profile="tiny").stage1.model_copy(update={"embed_dim": 6, "temperature_init": 0.07})
    save_alignment(tmp_path / "alignment.pt", Alignment(model, norm, data, splits, DIMS, [], {}, None, 1), p)
    loaded, loaded_norm = load_alignment(tmp_path / "alignment.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert all(np.array_equal(norm[m][0], loaded_norm[m][0]) for m in DIMS)
    for inputs in ("aligned", "encoder", "both"):
        trained, got_splits = load_aligned(path, inputs)
        served = aligned_inputs(data, tmp_path / "alignment.pt", inputs)
        assert trained.ids == served.ids == data.ids and got_splits == splits
        for i in range(len(data)):
            np.testing.assert_allclose(served.visual[i], trained.visual[i], atol=1e-6)
            np.testing.assert_allclose(served.audio[i], trained.audio[i], atol=1e-6)
        np.testing.assert_allclose(served.text, trained.text, atol=1e-6)
        assert np.array_equal(served.mask, trained.mask)
    one = project_clip(model, norm, data.visual[0], data.audio[0], data.text[0])
    assert one["aligned"]["V"].shape == (data.visual[0].shape[0], 6) and one["aligned"]["T"].shape == (6,)
    both, _ = load_aligned(path, "both")
    assert both.visual[0].shape[1] == 6 + DIMS["V"] and both.text.shape == (8, 6 + DIMS["T"])


def test_load_aligned_splits_the_sequences_back_per_clip(tmp_path):
    data = features()
    path = write_aligned(heads(), feature_norm(data, range(8)), data, ["train"] * 8, tmp_path / "a.npz")
    back, _ = load_aligned(path, "aligned")
    assert [v.shape[0] for v in back.visual] == [v.shape[0] for v in data.visual]
    assert [a.shape for a in back.audio] == [v.shape for v in back.visual]


def test_aligned_file_is_written_clip_by_clip_and_read_back_lazily(tmp_path):
    """The streamed aligned.npz holds what projecting every clip gives, np.load reads it, the same inputs give
    the same bytes, and load_aligned reads clips from the file on demand."""
    from emi.data.sequences import Joined, Ragged
    from emi.train.projection import load_aligned, project_clip

    data = features(n=6)
    model, norm = heads(), feature_norm(data, range(6))
    splits = ["train"] * 4 + ["valid"] * 2
    path = write_aligned(model, norm, data, splits, tmp_path / "a.npz")
    again = write_aligned(model, norm, data, splits, tmp_path / "b.npz")
    assert path.read_bytes() == again.read_bytes()
    with np.load(path, allow_pickle=False) as z:
        assert z["lengths"].tolist() == [v.shape[0] for v in data.visual] and z["ids"].tolist() == data.ids
    for inputs in ("aligned", "encoder", "both"):
        back, back_splits = load_aligned(path, inputs)
        assert back_splits == splits and back.ids == data.ids
        assert isinstance(back.visual, Joined if inputs == "both" else Ragged)
        for i in (0, 5):
            views = project_clip(model, norm, data.visual[i], data.audio[i], data.text[i])
            want = [views[v]["V"] for v in (("aligned", "encoder") if inputs == "both" else (inputs,))]
            np.testing.assert_allclose(back.visual[i], np.concatenate(want, axis=-1), rtol=0, atol=0)
        assert back.subset([5, 1]).visual[0].shape == back.visual[5].shape


def test_reliability_cues_travel_raw_through_the_aligned_file_and_inference_inputs(tmp_path):
    data = features(n=5)
    rng = np.random.default_rng(3)
    data.cues = {m: [rng.random((v.shape[0], c), dtype=np.float32) for v in data.visual]
                 for m, c in (("visual", 5), ("audio", 3))}
    model, norm = heads(), feature_norm(data, range(5))
    path = write_aligned(model, norm, data, ["train"] * 5, tmp_path / "a.npz")
    for inputs in ("aligned", "both"):
        back, _ = load_aligned(path, inputs)
        for m in ("visual", "audio"):
            for i in range(5):
                np.testing.assert_array_equal(back.cues[m][i], data.cues[m][i])  # never projected
    served = aligned_inputs(data, (model, norm), "both")
    assert served.cues is data.cues
    data.cues = None
    assert load_aligned(write_aligned(model, norm, data, ["train"] * 5, tmp_path / "b.npz"))[0].cues is None
