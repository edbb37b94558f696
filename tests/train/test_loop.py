"""Shared training mechanics: SGDR, EMA, atomic checkpoints with the random state, seeding, padded batches."""

import numpy as np
import pytest
import torch

from emi.config import load_params
from emi.data.sequences import SequenceData, batch_cues
from emi.train.loop import ema_of, load_checkpoint, restore_rng, rng_state, save_checkpoint, seed_everything, sgdr


def test_sgdr_schedule_matches_the_paper():
    p = load_params(None, profile="paper").stage2.schedule
    assert (p.lr_max, p.lr_min, p.cycle_epochs, p.epochs) == (1e-5, 1e-7, 10, 50)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=p.lr_max)
    sched = sgdr(opt, p)
    lrs = []
    for _ in range(p.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[10] == pytest.approx(1e-5) and lrs[40] == pytest.approx(1e-5)
    assert lrs[5] == pytest.approx((1e-5 + 1e-7) / 2)  # half-way down the cosine
    assert min(lrs) > 1e-7 and lrs[9] < 1e-6


def test_ema_moves_by_one_minus_decay_per_update():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ema_of(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update copies
    assert torch.allclose(ema.module.weight, torch.ones(1, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))
    assert ema.module is not model and model.weight[0, 0].item() == 3.0


def test_checkpoint_round_trip_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ckpt" / "checkpoint.pt"
    assert load_checkpoint(path) is None
    save_checkpoint(path, {"epoch": 3, "w": torch.arange(4.0), "history": [{"loss": 0.5}]})
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and torch.equal(back["w"], torch.arange(4.0)) and back["history"] == [{"loss": 0.5}]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_checkpoint(path, {"epoch": 4, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 3, "a failed write must leave the previous checkpoint"
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


def test_saving_one_state_twice_gives_the_same_bytes(tmp_path):
    """DVC hashes the models: the same weights must be the same file (torch.save named the zip's inner folder
    after the temporary file before)."""
    state = {"epoch": 1, "w": torch.arange(6.0).reshape(2, 3)}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_rng_state_restores_torch_and_numpy_streams():
    seed_everything(7)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3))
    restore_rng(state)
    again = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_seed_everything_returns_a_seeded_generator():
    a = torch.randperm(10, generator=seed_everything(3)).tolist()
    b = torch.randperm(10, generator=seed_everything(3)).tolist()
    c = torch.randperm(10, generator=seed_everything(4)).tolist()
    assert a == b and a != c


def test_sequence_data_pads_per_batch_and_subsets():
    rng = np.random.default_rng(0)
    data = SequenceData(["a", "b", "c"], [rng.random((n, 4), dtype=np.float32) for n in (3, 1, 2)],
                        [rng.random((n, 2), dtype=np.float32) for n in (3, 1, 2)],
                        rng.random((3, 5), dtype=np.float32), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]], bool),
                        rng.random((3, 6)))
    b = data.batch([1, 2])
    assert b["v"].shape == (2, 2, 4) and b["a"].shape == (2, 2, 2) and b["t"].shape == (2, 5)
    assert b["time_mask"].tolist() == [[True, False], [True, True]]
    assert (b["v"][0, 1] == 0).all(), "padding must be zeros"
    assert b["modality_mask"].tolist() == [[True, False, True], [True, True, False]] and b["y"].dtype == torch.float32
    sub = data.subset([2, 0])
    assert sub.ids == ["c", "a"] and len(sub) == 2 and np.array_equal(sub.labels, data.labels[[2, 0]])
    seen = [i for batch in data.batches(2, torch.Generator().manual_seed(0)) for i in batch["t"][:, 0].tolist()]
    assert sorted(seen) == pytest.approx(sorted(data.text[:, 0].tolist())), "every clip once per epoch"


def test_modality_dropout_hides_modalities_by_the_generator_and_leaves_every_clip_one():
    from emi.train.loop import modality_dropout

    mask = torch.ones(400, 3, dtype=torch.bool)
    mask[:50, 2] = False  # clips without text
    used = torch.tensor([True, True, True])
    assert torch.equal(modality_dropout(mask, 0.0, used, torch.Generator().manual_seed(0)), mask)
    out = modality_dropout(mask, 0.5, used, torch.Generator().manual_seed(0))
    assert torch.equal(out, modality_dropout(mask, 0.5, used, torch.Generator().manual_seed(0)))  # seeded
    assert not (out & ~mask).any()  # never shows a modality the clip does not have
    assert out.any(1).all()  # every clip keeps one
    assert 0.35 < 1 - out[50:].float().mean() < 0.5  # about half hidden (less: the kept-one rule)
    only_v = modality_dropout(mask, 0.9, torch.tensor([True, False, False]), torch.Generator().manual_seed(1))
    assert only_v[:, 0].all()  # the one modality a V-only model reads is always kept


def test_sequence_data_carries_reliability_cues_through_subsets_joins_and_batches():
    rng = np.random.default_rng(1)
    lengths = (3, 1, 2)
    cues = {"visual": [rng.random((n, 5), dtype=np.float32) for n in lengths],
            "audio": [rng.random((n, 3), dtype=np.float32) for n in lengths]}
    data = SequenceData(["a", "b", "c"], [rng.random((n, 4), dtype=np.float32) for n in lengths],
                        [rng.random((n, 2), dtype=np.float32) for n in lengths], rng.random((3, 5), dtype=np.float32),
                        np.ones((3, 3), bool), rng.random((3, 6)), cues)
    b = data.batch([1, 0])
    assert b["cues_v"].shape == (2, 3, 5) and b["cues_a"].shape == (2, 3, 3)
    assert (b["cues_v"][0, 1:] == 0).all(), "padding must be zeros"
    np.testing.assert_array_equal(b["cues_a"][1].numpy(), cues["audio"][0])
    assert batch_cues(b)["V"] is b["cues_v"] and batch_cues(data.subset([0]).followed_by(data).batch([0])) is not None
    joined = data.subset([2]).followed_by(data.subset([0, 1]))
    np.testing.assert_array_equal(joined.cues["visual"][1], cues["visual"][0])
    plain = SequenceData(data.ids, data.visual, data.audio, data.text, data.mask, data.labels)
    assert batch_cues(plain.batch([0, 1])) is None and "cues_v" not in plain.batch([0])
    assert data.followed_by(plain).cues is None, "cues for some clips only: none"
