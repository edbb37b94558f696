"""The per-clip sequences the models read (emi.data.sequences)."""

import numpy as np
import pytest
import torch


def test_chained_sequences_read_each_part_in_turn_and_pick_views_of_them():
    from emi.data.sequences import Chained, Picked, take

    a = [np.full((2, 3), i, np.float32) for i in range(3)]
    b = [np.full((4, 3), 10 + i, np.float32) for i in range(2)]
    chain = Chained([a, b])
    assert len(chain) == 5 and [x[0, 0] for x in chain] == [0, 1, 2, 10, 11]
    with pytest.raises(IndexError):
        chain[5]
    picked = take(chain, [4, 0, 3])
    assert isinstance(picked, Picked) and [x[0, 0] for x in picked] == [11, 0, 10]
    assert [x[0, 0] for x in take(picked, [2, 0])] == [10, 11]


def test_a_batch_moves_to_the_cpu_as_it_is():
    from emi.data.sequences import to_device

    batch = {"v": torch.ones(2, 3), "mask": torch.tensor([True, False])}
    moved = to_device(batch, "cpu")
    assert moved.keys() == batch.keys() and all(moved[k] is batch[k] for k in batch), "no copy on the CPU"
