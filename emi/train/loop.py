"""Shared training mechanics of Stage I and Stage II: seeding, SGDR, EMA, atomic checkpoints with resume, batching."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from emi.config import ScheduleParams
from emi.data.store import Chained, take
from emi.utils import atomic_path

def seed_everything(seed: int) -> torch.Generator:
    """Same seed, same numbers on CPU: python, numpy, torch, and deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def sgdr(optimizer: torch.optim.Optimizer, schedule: ScheduleParams) -> CosineAnnealingWarmRestarts:
    """Cosine annealing with warm restarts stepped once per epoch: eta_max -> eta_min over each T_0-epoch cycle."""
    return CosineAnnealingWarmRestarts(optimizer, T_0=schedule.cycle_epochs, T_mult=1, eta_min=schedule.lr_min)


def ema_of(model: nn.Module, decay: float) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact. Written through a file object: given a
    path, torch.save names the zip's inner folder after the (random) temporary file, so two saves of one state
    differed in bytes and DVC saw a new model every run."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: Path) -> dict | None:
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(
        np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy())}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, 624, 0, 0.0))


# ----------------------------------------------------------------------------- data
CUE_KEYS = {"visual": "cues_v", "audio": "cues_a"}
"""A batch's padded reliability cues (B, T, cues) per modality, when the data has them."""


def batch_cues(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The cues of a batch as ``EMIFusionModel`` takes them ({"V": ..., "A": ...}), None without cues."""
    if CUE_KEYS["visual"] not in batch:
        return None
    return {"V": batch[CUE_KEYS["visual"]], "A": batch[CUE_KEYS["audio"]]}


@dataclass
class SequenceData:
    """Per-clip sequences and masks, padded per batch. ``visual``/``audio`` are lists of arrays or on-disk
    sequences (``emi.data.store.Ragged``): a clip's rows are read when its batch is built. ``cues`` are the
    per-step reliability cues of the visual and audio modalities (``emi.cues``, raw: never projected), or None
    for features stored without them."""

    ids: list[str]
    visual: Sequence[np.ndarray]
    audio: Sequence[np.ndarray]
    text: np.ndarray
    mask: np.ndarray  # (N, 3) V, A, T usable
    labels: np.ndarray | None  # (N, 6) or None
    cues: dict[str, Sequence[np.ndarray]] | None = None  # {"visual": ..., "audio": ...}

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int] | np.ndarray) -> SequenceData:
        rows = list(rows)
        return SequenceData([self.ids[i] for i in rows], take(self.visual, rows), take(self.audio, rows),
                            self.text[rows], self.mask[rows], None if self.labels is None else self.labels[rows],
                            None if self.cues is None else {m: take(c, rows) for m, c in self.cues.items()})

    def batch(self, rows: list[int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        vs, as_ = [self.visual[i] for i in rows], [self.audio[i] for i in rows]
        lengths = [x.shape[0] for x in vs]
        T = max(lengths)
        v = np.zeros((len(rows), T, vs[0].shape[1]), np.float32)
        a = np.zeros((len(rows), T, as_[0].shape[1]), np.float32)
        time_mask = np.zeros((len(rows), T), bool)
        for j, n in enumerate(lengths):
            v[j, :n], a[j, :n], time_mask[j, :n] = vs[j], as_[j][:n], True
        out = {"v": torch.from_numpy(v), "a": torch.from_numpy(a), "t": torch.from_numpy(self.text[rows]),
               "time_mask": torch.from_numpy(time_mask), "modality_mask": torch.from_numpy(self.mask[rows])}
        for m, key in CUE_KEYS.items() if self.cues is not None else ():
            cs = [self.cues[m][i] for i in rows]
            padded = np.zeros((len(rows), T, cs[0].shape[1]), np.float32)
            for j, n in enumerate(lengths):
                padded[j, :n] = cs[j][:n]
            out[key] = torch.from_numpy(padded)
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[rows].astype(np.float32))
        return {k: v.to(device) for k, v in out.items()}

    def followed_by(self, other: SequenceData) -> SequenceData:
        """These clips, then ``other``'s (both labelled, or neither)."""
        labels = None if self.labels is None else np.concatenate([self.labels, other.labels]).astype(np.float32)
        cues = (None if self.cues is None or other.cues is None  # cues for some clips only: for none
                else {m: Chained([self.cues[m], other.cues[m]]) for m in self.cues})
        return SequenceData(self.ids + other.ids, Chained([self.visual, other.visual]),
                            Chained([self.audio, other.audio]), np.concatenate([self.text, other.text]),
                            np.concatenate([self.mask, other.mask]), labels, cues)

    def chunks(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[dict[str, Tensor]]:
        """Batches in clip order (inference): memory is one batch, whatever the number of clips."""
        for start in range(0, len(self), batch_size):
            yield self.batch(list(range(start, min(start + batch_size, len(self)))), device)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> Iterator[dict[str, Tensor]]:
        order = torch.randperm(len(self), generator=generator).tolist() if generator is not None else list(
            range(len(self)))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size], device)


def modality_dropout(mask: Tensor, rate: float, used: Tensor, generator: torch.Generator) -> Tensor:
    """Training-time modality dropout: each available modality (columns V, A, T) of each clip is hidden with
    probability ``rate``; a clip that would lose every ``used`` modality it had keeps one of them, drawn uniformly."""
    draw = torch.rand(mask.shape, generator=generator)
    out = mask & (draw >= rate)
    had = mask & used
    lost = had.any(1) & ~(out & used).any(1)
    if lost.any():
        pick = torch.where(had, torch.rand(mask.shape, generator=generator), torch.full(mask.shape, -1.0)).argmax(1)
        out[lost, pick[lost]] = True
    return out