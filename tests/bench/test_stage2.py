"""`emi bench stage2`: both loops on the same data, the work an epoch needs and the rate each loop reached."""

import numpy as np
import pytest

from emi.bench.stage2 import LoopRun, bench_lines, bench_stage2, epoch_gflop, longer, matmul_gflop_per_s
from emi.data.sequences import SequenceData
from tests.conftest import tiny


def clips(n: int = 12, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    steps = rng.integers(3, 15, n)
    return SequenceData([f"{i:05d}" for i in range(n)], [rng.normal(size=(s, 10)).astype(np.float32) for s in steps],
                        [rng.normal(size=(s, 8)).astype(np.float32) for s in steps],
                        rng.normal(size=(n, 6)).astype(np.float32), np.ones((n, 3), bool),
                        rng.uniform(size=(n, 6)).astype(np.float32))


def test_longer_plays_each_clip_times_in_a_row():
    data = clips()
    long = longer(data, 3)
    assert long.steps() == [3 * s for s in data.steps()]
    np.testing.assert_array_equal(long.visual[0], np.concatenate([data.visual[0]] * 3))
    assert long.text is data.text and long.ids == data.ids


def test_epoch_work_grows_with_length_and_with_padding():
    p = tiny("stage2.reliability_cues=false", "stage2.width=16", "stage2.transformer_heads=2").stage2
    data = clips()
    one = epoch_gflop(p, 1, data)
    # every sequence twice as long: the per-step layers do twice the work, attention four times
    assert 2.0 <= epoch_gflop(p, 1, longer(data, 2)) / one <= 4.0
    # random batches pad each clip to its batch's longest: more work than length-sorted pools
    assert epoch_gflop(p.model_copy(update={"batch_pool": 1}), 1, data) > one
    assert epoch_gflop(p.model_copy(update={"modalities": ("T",)}), 1, data) < one


def test_matmul_rate_is_a_positive_rate():
    assert 0 < matmul_gflop_per_s(64, 16, repeats=3) < 1e5


def test_lines_give_the_ratio_and_the_share_of_the_matmul_rate():
    runs = [LoopRun("as generated", "reference", 100, 20.0, 40, 10, 50.0, 2.0),
            LoopRun("as generated", "configured", 100, 20.0, 40, 10, 25.0, 1.5)]
    table = bench_lines(runs, 4.0)
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert row[3:] == ["20.0", "40.0", "2.00x", "2.0 / 1.5", "0.4 / 0.6 (10% / 15%)"]
    assert table[-1].endswith("4.0 GFLOP/s")


@pytest.mark.slow  # extract + Stage I, then four short trainings
def test_bench_runs_both_loops_on_both_shapes(tiny_aligned, tiny_dataset):
    lines = []
    runs, peak = bench_stage2(tiny().stage2, 7, tiny_aligned.aligned_path, None, tiny_dataset, 1, 2, lines.append)
    assert [(r.shape, r.loop) for r in runs] == [(s, loop) for s in ("as generated", "2x longer")
                                                 for loop in ("reference", "configured")]
    assert runs[2].mean_steps == 2 * runs[0].mean_steps and peak > 0
    assert all(r.seconds > 0 and r.epoch_gflop > 0 for r in runs) and len(lines) == 5
