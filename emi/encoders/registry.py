"""The encoder registry: kind -> factory per modality, and loading the three extract encoders at once (with the
fine-tuned blocks a Stage-I model carries, so new clips are encoded exactly as the training clips were)."""

from __future__ import annotations

import logging

import torch

from emi.config import DataParams, ExtractParams, MODALITIES
from emi.encoders.audio import AUDIO_FACTORIES, load_audio
from emi.encoders.base import EncoderError, resolve_device, resolve_dtype
from emi.encoders.text import TEXT_FACTORIES, load_text
from emi.encoders.tuning import load_block_state
from emi.encoders.visual import VISUAL_FACTORIES, load_visual
from emi.features.decoded import DecodedStore
from emi.features.featurize import Featurizer

log = logging.getLogger(__name__)

FACTORIES = {"visual": VISUAL_FACTORIES, "audio": AUDIO_FACTORIES, "text": TEXT_FACTORIES}
LOADERS = {"visual": load_visual, "audio": load_audio, "text": load_text}


def feature_revision(modality: str, kind: str) -> int:
    """Bumped in an encoder class (``revision``) whenever a code change alters the features it produces, so
    feature shards written by older code are recomputed rather than mixed with new ones."""
    return getattr(FACTORIES[modality].get(kind), "revision", 1)


def encoder_spec(cfg: ExtractParams, modality: str) -> dict:
    return getattr(cfg, modality).model_dump(mode="json")


def encoder_key(cfg: ExtractParams, modality: str) -> dict:
    """What features depend on from the encoder: its spec and the code revision of its kind."""
    return {"spec": encoder_spec(cfg, modality), "revision": feature_revision(modality, getattr(cfg, modality).kind)}


def load_encoders(cfg: ExtractParams, device: torch.device, dtype: torch.dtype, needed: set[str],
                  tuned: dict | None = None) -> dict:
    """The extract encoders of ``needed`` modalities; ``tuned`` (from a Stage-I model that fine-tuned encoder
    blocks) replaces those blocks' weights."""
    encoders = {m: LOADERS[m](getattr(cfg, m), device, dtype) for m in MODALITIES if m in needed}
    for enc in encoders.values():
        if enc.resolved.random_init:
            log.warning("%s uses RANDOM weights (allowed by the profile); reports say so", enc.resolved.describe())
    for m, entry in (tuned or {}).items():
        if m not in encoders:
            continue
        if entry["spec"] != encoder_spec(cfg, m):
            raise EncoderError(f"extract.{m}: the Stage-I model fine-tuned {entry['spec']}, but the params say "
                               f"{encoder_spec(cfg, m)}; use the params the model was trained with")
        load_block_state(encoders[m], entry["state"], f"extract.{m}")
        log.info("extract.%s: fine-tuned weights of %s", m, ", ".join(entry["blocks"]))
    return encoders


def load_featurizer(cfg: ExtractParams, data: DataParams, needed: set[str] | tuple[str, ...] = MODALITIES,
                    tuned: dict | None = None, store: DecodedStore | None = None) -> Featurizer:
    """The one decode -> encode path with its encoders loaded on ``extract.device`` / ``extract.dtype`` (and the
    blocks a Stage-I model fine-tuned, when ``tuned``), reading the clips kept in ``store`` instead of decoding."""
    device = resolve_device(cfg.device)
    return Featurizer(cfg, data, load_encoders(cfg, device, resolve_dtype(cfg.dtype, device), set(needed), tuned),
                      store)
