"""`emi bench stage2`: Stage-II training throughput, the configured loop against the reference loop, on the
pipeline's own aligned features and on the same clips made ``longer`` times longer.

The reference is the same training with the settings the loop had before it was made fast: random batches padded
to their longest clip (``batch_pool: 1``), every clip read from disk for every batch (``cache_mb: 0``) and the EMA
weights validated after every epoch (``validate_every: 1``). Same model, data, seed and epochs: the ratio is the
speed-up of the loop alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emi.config import Stage2Params
from emi.data.sequences import SequenceData
from emi.train.fusion import split_data, train_model, with_copies

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

    @property
    def clip_epochs_per_s(self) -> float:
        return self.clips * self.epochs / self.seconds


def longer(data: SequenceData, times: int) -> SequenceData:
    """Each clip's sequences (and cues) played ``times`` times in a row: the same clips, ``times`` times longer."""
    def tile(seqs) -> list[np.ndarray]:
        return [np.tile(np.asarray(x), (times, 1)) for x in seqs]

    return SequenceData(data.ids, tile(data.visual), tile(data.audio), data.text, data.mask, data.labels,
                        None if data.cues is None else {m: tile(c) for m, c in data.cues.items()})


def bench_stage2(p: Stage2Params, seed: int, aligned: Path, augmented: Path | None, raw_dir: Path, epochs: int,
                 times: int, echo=print) -> list[LoopRun]:
    """The reference and the configured loop, one after the other, on the default data and ``times`` longer."""
    p = p.model_copy(update={"schedule": p.schedule.model_copy(update={"epochs": epochs})})
    parts = split_data(aligned, raw_dir, p.inputs)
    train = with_copies(parts["train"], augmented, p.inputs)
    runs = []
    for shape, (tr, va) in {"as generated": (train, parts["valid"]),
                            f"{times}x longer": (longer(train, times), longer(parts["valid"], times))}.items():
        steps = tr.steps()
        for loop, settings in (("reference", REFERENCE), ("configured", {})):
            start = time.perf_counter()
            train_model(p.model_copy(update=settings), seed, tr, va, None, log_epochs=False)
            run = LoopRun(shape, loop, len(tr), float(np.mean(steps)), int(max(steps)), epochs,
                          time.perf_counter() - start)
            echo(f"{shape:>14}  {loop:<10}  {run.seconds:7.1f} s  {run.clip_epochs_per_s:7.1f} clip-epochs/s")
            runs.append(run)
    return runs


def bench_lines(runs: list[LoopRun]) -> list[str]:
    out = ["| data | clips | steps mean / max | reference clip-epochs/s | configured clip-epochs/s | ratio |",
           "|---|---|---|---|---|---|"]
    for shape in dict.fromkeys(r.shape for r in runs):
        ref, new = (next(r for r in runs if r.shape == shape and r.loop == loop) for loop in ("reference",
                                                                                             "configured"))
        out.append(f"| {shape} | {ref.clips} | {ref.mean_steps:.1f} / {ref.max_steps} | "
                   f"{ref.clip_epochs_per_s:.1f} | {new.clip_epochs_per_s:.1f} | "
                   f"{new.clip_epochs_per_s / ref.clip_epochs_per_s:.2f}x |")
    return out
