"""`emi bench ablate`: the arithmetic the ablation grid's trainings need, and the shortest time this machine could
do it in: the grid's matmul, convolution and attention GFLOP (forward and backward, as ``torch.utils.flop_counter``
counts them, on each cell's batches as the configured loop draws them) over the best fp32 matmul rate its workers
reach. Elementwise work, the optimizer, validation and process start are left out, so the floor is a lower bound:
a grid whose wall time is near it is bound by the model's arithmetic, and only less arithmetic (or faster hardware)
makes it shorter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from emi.bench.stage2 import epoch_gflop, matmul_gflop_per_s
from emi.config import Params
from emi.data.sequences import SequenceData
from emi.encoders.base import resolve_device
from emi.evaluation.ablation import ablation_grid, blocks_name
from emi.train.fusion import split_data, with_copies

LARGE_MATMUL = (2048, 512)
"""rows x width of the large matmul that measures a worker's best rate: (2048 x 512) @ (512 x 2048)."""


@dataclass
class CellWork:
    cell: str
    trainings: int
    epoch_gflop: float

    def gflop(self, epochs: float) -> float:
        return self.epoch_gflop * epochs * self.trainings


def grid_work(params: Params, train_for: Callable[[str], SequenceData]) -> list[CellWork]:
    """Each cell of the ablation grid: its trainings (``evaluate.seeds``; the configured cell's seed 0 is Stage II's
    model, reused) and the GFLOP of one of its epochs on ``train_for(inputs)``, the training clips of its inputs."""
    base, seeds = params.stage2, params.evaluate.seeds
    out = []
    for p in ablation_grid(base):
        cell = f"{'+'.join(p.modalities)}/{p.fusion}/{p.inputs}/{blocks_name(p.temporal)}"
        out.append(CellWork(cell, seeds - (p == base), epoch_gflop(p, params.seed, train_for(p.inputs))))
    return out


def side_by_side(params: Params) -> int:
    """Ablation workers that add compute: ``stage2.ablation_workers`` on a CPU (each its share of the threads); on a
    GPU they share one device."""
    return max(1, params.stage2.ablation_workers) if resolve_device(params.stage2.device).type == "cpu" else 1


def worker_rate(params: Params, mean_steps: float) -> float:
    """The best fp32 matmul GFLOP/s one ablation worker reaches (its share of the threads, on ``stage2.device``):
    the larger of the feed-forward's shape for a batch of clips of ``mean_steps`` steps and ``LARGE_MATMUL``."""
    device = resolve_device(params.stage2.device).type
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // side_by_side(params)))
    try:
        return max(matmul_gflop_per_s(params.stage2.batch_size * max(1, round(mean_steps)), params.stage2.width,
                                      device=device),
                   matmul_gflop_per_s(*LARGE_MATMUL, repeats=10, device=device))
    finally:
        torch.set_num_threads(threads)


def floor_seconds(work: list[CellWork], epochs: float, rate: float, workers: int) -> float:
    """Seconds the grid's counted work takes at ``rate`` GFLOP/s per worker with ``workers`` side by side."""
    return sum(c.gflop(epochs) for c in work) / (rate * workers)


def floor_lines(work: list[CellWork], epochs: float, rate: float, workers: int) -> list[str]:
    out = ["| cell | trainings | GFLOP per epoch | GFLOP |", "|---|---|---|---|"]
    out += [f"| {c.cell} | {c.trainings} | {c.epoch_gflop:.1f} | {c.gflop(epochs):,.0f} |" for c in work]
    total = sum(c.gflop(epochs) for c in work)
    out.append(f"| all ({epochs:.4g} epochs each) | {sum(c.trainings for c in work)} | | {total:,.0f} |")
    out.append(f"\nbest fp32 matmul rate of one worker: {rate:.1f} GFLOP/s; {workers} workers: the grid's trainings "
               f"need at least {floor_seconds(work, epochs, rate, workers):,.0f} s")
    return out


def bench_ablate(params: Params, aligned: Path, augmented: Path | None, raw_dir: Path) -> list[str]:
    """The grid's work on the pipeline's features (training split plus damaged copies, as ``emi ablate`` trains) and
    its floor on this machine, as markdown lines."""
    data: dict[str, SequenceData] = {}

    def train_for(inputs: str) -> SequenceData:
        if inputs not in data:
            data[inputs] = with_copies(split_data(aligned, raw_dir, inputs)["train"], augmented, inputs)
        return data[inputs]

    work = grid_work(params, train_for)
    steps = train_for(params.stage2.inputs).steps()
    rate = worker_rate(params, sum(steps) / max(1, len(steps)))
    schedule, batches = params.stage2.schedule, -(-len(train_for(params.stage2.inputs)) // params.stage2.batch_size)
    epochs = schedule.steps / batches if schedule.per_step else schedule.epochs  # the last epoch cut short
    return floor_lines(work, epochs, rate, side_by_side(params))
