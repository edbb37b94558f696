"""Stage I fine-tuning support: which blocks of an encoder can be trained, and moving their weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emi.encoders.base import EncoderError


@dataclass
class TunableBlocks:
    """Where an encoder's weights live for Stage I fine-tuning: its module, its blocks in order, and the modules
    after the last block (final norm, classifier) that are trained together with the last k blocks."""

    module: nn.Module
    names: list[str]
    after: list[str]

    def last(self, k: int, role: str) -> list[str]:
        if not 1 <= k <= len(self.names):
            raise EncoderError(f"{role}: cannot fine-tune the last {k} blocks of an encoder with {len(self.names)}")
        return self.names[len(self.names) - k:] + self.after


def tunable_blocks(encoder, role: str) -> TunableBlocks:
    if not hasattr(encoder, "blocks"):
        raise EncoderError(f"{role}: {encoder.resolved.describe()} cannot be fine-tuned (no trainable torch module; "
                           "whisper-encoder runs in CTranslate2): leave it out of stage1.finetune.modalities or use "
                           "a torch encoder (fer, open_clip, wav2vec2)")
    return encoder.blocks()


def under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def block_state(encoder, prefixes: list[str]) -> dict[str, torch.Tensor]:
    """The weights of the named blocks (what fine-tuning changed), detached, on CPU."""
    module = encoder.blocks().module
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items() if under(k, prefixes)}


def load_block_state(encoder, state: dict[str, torch.Tensor], role: str) -> None:
    """Put fine-tuned block weights into a freshly loaded encoder (its dtype and device)."""
    module = tunable_blocks(encoder, role).module
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise EncoderError(f"{role}: fine-tuned weights do not fit this encoder (e.g. {unknown[0]!r}); the Stage-I "
                           "model was trained with a different extract encoder")
    for name, value in state.items():
        if own[name].shape != value.shape:
            raise EncoderError(f"{role}: fine-tuned {name} has shape {tuple(value.shape)}, the encoder "
                               f"{tuple(own[name].shape)}")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value.to(own[name].dtype))
