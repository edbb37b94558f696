"""`emi bench stage2`: Stage-II training throughput, the configured loop against the reference loop, on the
pipeline's own aligned features and on the same clips made ``longer`` times longer.

The reference is the same training with the settings the loop had before it was made fast: random batches padded
to their longest clip (``batch_pool: 1``), every clip read from disk for every batch (``cache_mb: 0``) and the EMA
weights validated after every epoch (``validate_every: 1``). Same model, data, seed and epochs: the ratio is the
speed-up of the loop alone.

Next to each loop it prints the work one epoch needs (matmul, convolution and attention GFLOP, forward and backward,
as ``torch.utils.flop_counter`` counts them) and the rate the loop reached, as a share of what one fp32 matmul of a
shape the model runs (the Transformer's feed-forward: batch tokens x W times W x 4W) reaches on the loops' device
(``stage2.device``; on a CPU with the same threads): a loop near that share is bound by the model's arithmetic, not
by its own overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from emi.config import Stage2Params
from emi.data.sequences import SequenceData
from emi.encoders.base import resolve_device
from emi.model import EMIFusionModel, emi_loss
from emi.train.fusion import dims_of, forward_batch, split_data, train_model, with_copies

REFERENCE = {"batch_pool": 1, "cache_mb": 0.0, "validate_every": 1}


@dataclass
class LoopRun:
    shape: str
    loop: str
    clips: int
    mean_steps: float
    max_steps: int
    epochs: int
    seconds: float
    epoch_gflop: float  # matmul, convolution and attention work of one training epoch, forward and backward

    @property
    def clip_epochs_per_s(self) -> float:
        return self.clips * self.epochs / self.seconds

    @property
    def gflop_per_s(self) -> float:
        return self.epoch_gflop * self.epochs / self.seconds


def epoch_gflop(p: Stage2Params, seed: int, data: SequenceData) -> float:
    """GFLOP of one training epoch of ``p``'s model on ``data`` (its batches as ``p`` draws them: batch_pool
    decides the padding), forward and backward, counted by ``torch.utils.flop_counter`` (matmuls, convolutions,
    attention; elementwise work is not counted)."""
    model = EMIFusionModel.from_params(p, dims_of(data)).train()
    generator = torch.Generator().manual_seed(seed)
    with FlopCounterMode(display=False) as counter:
        for b in data.batches(p.batch_size, generator, "cpu", p.batch_pool):
            emi_loss(forward_batch(model, b)["pred"], b["y"], p.pearson_loss_weight).backward()
    return counter.get_total_flops() / 1e9


def matmul_gflop_per_s(rows: int, width: int, repeats: int = 50, device: str = "cpu") -> float:
    """fp32 GFLOP/s of ``(rows x width) @ (width x 4 width)`` on ``device`` (on a CPU with torch's current threads):
    the Transformer feed-forward's shape for a batch of ``rows`` tokens (the median of ``repeats`` timings)."""
    dev = torch.device(device)
    a, b = torch.rand(rows, width, device=dev), torch.rand(width, 4 * width, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.mm(a, b)  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - start)
    return 2 * rows * width * 4 * width / float(np.median(times)) / 1e9


def longer(data: SequenceData, times: int) -> SequenceData:
    """Each clip's sequences (and cues) played ``times`` times in a row: the same clips, ``times`` times longer."""
    def tile(seqs) -> list[np.ndarray]:
        return [np.tile(np.asarray(x), (times, 1)) for x in seqs]

    return SequenceData(data.ids, tile(data.visual), tile(data.audio), data.text, data.mask, data.labels,
                        None if data.cues is None else {m: tile(c) for m, c in data.cues.items()})


def bench_stage2(p: Stage2Params, seed: int, aligned: Path, augmented: Path | None, raw_dir: Path, epochs: int,
                 times: int, echo=print) -> tuple[list[LoopRun], float]:
    """The reference and the configured loop, one after the other, on the default data and ``times`` longer; and
    the machine's matmul GFLOP/s at the model's feed-forward shape (``matmul_gflop_per_s``, one batch of clips of
    the default data's mean length)."""
    p = p.model_copy(update={"schedule": p.schedule.as_epochs(epochs)})
    parts = split_data(aligned, raw_dir, p.inputs)
    train = with_copies(parts["train"], augmented, p.inputs)
    runs = []
    for shape, (tr, va) in {"as generated": (train, parts["valid"]),
                            f"{times}x longer": (longer(train, times), longer(parts["valid"], times))}.items():
        steps = tr.steps()
        for loop, settings in (("reference", REFERENCE), ("configured", {})):
            looped = p.model_copy(update=settings)
            start = time.perf_counter()
            train_model(looped, seed, tr, va, None, log_epochs=False)
            run = LoopRun(shape, loop, len(tr), float(np.mean(steps)), int(max(steps)), epochs,
                          time.perf_counter() - start, epoch_gflop(looped, seed, tr))
            echo(f"{shape:>14}  {loop:<10}  {run.seconds:7.1f} s  {run.clip_epochs_per_s:7.1f} clip-epochs/s  "
                 f"{run.epoch_gflop:6.1f} GFLOP/epoch  {run.gflop_per_s:5.1f} GFLOP/s")
            runs.append(run)
    device = resolve_device(p.device)  # the loops' device: their rate is compared with its matmuls
    peak = matmul_gflop_per_s(p.batch_size * round(runs[0].mean_steps), p.width, device=device.type)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    echo(f"fp32 matmul at the feed-forward's shape: {peak:.1f} GFLOP/s ({where})")
    return runs, peak


def bench_lines(runs: list[LoopRun], peak_gflop_per_s: float) -> list[str]:
    """A markdown table: per data shape, both loops' clip-epochs/s and their ratio, each loop's GFLOP per epoch and
    its GFLOP/s as a share of ``peak_gflop_per_s``."""
    out = ["| data | clips | steps mean / max | reference clip-epochs/s | configured clip-epochs/s | ratio | "
           "GFLOP/epoch ref / conf | GFLOP/s ref / conf (share of matmul) |",
           "|---|---|---|---|---|---|---|---|"]
    for shape in dict.fromkeys(r.shape for r in runs):
        ref, new = (next(r for r in runs if r.shape == shape and r.loop == loop) for loop in ("reference",
                                                                                             "configured"))
        out.append(f"| {shape} | {ref.clips} | {ref.mean_steps:.1f} / {ref.max_steps} | "
                   f"{ref.clip_epochs_per_s:.1f} | {new.clip_epochs_per_s:.1f} | "
                   f"{new.clip_epochs_per_s / ref.clip_epochs_per_s:.2f}x | {ref.epoch_gflop:.1f} / "
                   f"{new.epoch_gflop:.1f} | {ref.gflop_per_s:.1f} / {new.gflop_per_s:.1f} "
                   f"({ref.gflop_per_s / peak_gflop_per_s:.0%} / {new.gflop_per_s / peak_gflop_per_s:.0%}) |")
    out.append(f"\nfp32 matmul at the feed-forward's shape on the loops' device: {peak_gflop_per_s:.1f} GFLOP/s")
    return out
