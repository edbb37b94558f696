"""Shared training mechanics of Stage I and Stage II: seeding, SGDR, EMA, atomic checkpoints with resume, batching."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from emi.config import ScheduleParams
from emi.utils import atomic_path

def seed_everything(seed: int) -> torch.Generator:
    """Same seed, same numbers on CPU: python, numpy, torch, and deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode also fills every new tensor's memory with NaN, a debugging aid against reading memory no
    # kernel wrote: ~1,100 fills per Stage-II step, 3-6 % of a CPU training; the numbers never depend on it
    torch.utils.deterministic.fill_uninitialized_memory = False
    return torch.Generator().manual_seed(seed)


def sgdr(optimizer: torch.optim.Optimizer, schedule: ScheduleParams) -> CosineAnnealingWarmRestarts:
    """Cosine annealing with warm restarts: eta_max -> eta_min over each cycle of T_0 epochs, stepped once per epoch,
    or of T_0 optimizer steps (a Stage-II schedule whose length is in steps), stepped after each of them."""
    cycle = schedule.cycle_steps if getattr(schedule, "per_step", False) else schedule.cycle_epochs
    return CosineAnnealingWarmRestarts(optimizer, T_0=cycle, T_mult=1, eta_min=schedule.lr_min)


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