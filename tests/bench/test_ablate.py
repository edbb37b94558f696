"""`emi bench ablate`: the grid's counted work and the floor it puts on the ablation's wall time."""

import pytest

from emi.bench.ablate import CellWork, floor_lines, floor_seconds, grid_work, worker_rate
from emi.bench.stage2 import epoch_gflop
from tests.bench.test_stage2 import clips
from tests.conftest import tiny


def test_every_cell_counts_its_trainings_and_its_epoch_work():
    params = tiny("evaluate.seeds=3", "stage2.reliability_cues=false", "stage2.width=16", "stage2.transformer_heads=2")
    data = clips()
    asked = []
    work = grid_work(params, lambda inputs: asked.append(inputs) or data)
    assert len(work) == 13 and set(asked) == {"aligned", "encoder", "both"}
    base = f"V+A+T/{params.stage2.fusion}/{params.stage2.inputs}/TCN + BiLSTM"
    # three seeds a cell, but the configured model's first seed is Stage II's own training
    assert {c.cell: c.trainings for c in work}[base] == 2 and sum(c.trainings for c in work) == 38
    by_cell = {c.cell: c.epoch_gflop for c in work}
    assert by_cell[base] == pytest.approx(epoch_gflop(params.stage2, params.seed, data))
    assert by_cell[f"T/{params.stage2.fusion}/{params.stage2.inputs}/TCN + BiLSTM"] < by_cell[base]


def test_floor_is_the_work_over_the_workers_rate():
    work = [CellWork("a", 3, 2.0), CellWork("b", 2, 5.0)]
    assert floor_seconds(work, 10, 4.0, 2) == pytest.approx((60 + 100) / 8)
    lines = floor_lines(work, 10, 4.0, 2)
    assert lines[2] == "| a | 3 | 2.0 | 60 |" and lines[4] == "| all (10 epochs each) | 5 | | 160 |"
    assert lines[-1].endswith("need at least 20 s")


def test_worker_rate_is_a_rate_and_leaves_the_threads_as_they_were():
    import torch

    threads = torch.get_num_threads()
    assert 0 < worker_rate(tiny("stage2.width=16", "stage2.ablation_workers=2"), 10.0) < 1e5
    assert torch.get_num_threads() == threads
