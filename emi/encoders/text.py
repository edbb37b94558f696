"""Text encoders (one vector per transcript): BERT-family models, attention-masked mean pooling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from emi.config import EncoderSpec
from emi.encoders.base import EncoderError, Resolved, build, check_dim, local_only, offline_env


class BertEncoder:
    """A BERT-family encoder (BERT-base, MiniLM): attention-masked mean of the last hidden states."""

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load is noise in stage logs
        offline_env(resolved)
        if resolved.random_init:
            raise EncoderError("extract.text: a text encoder needs at least a tokenizer; give a path or hub id")
        local = local_only(resolved)
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.location, local_files_only=local)
        self.model = AutoModel.from_pretrained(resolved.location, local_files_only=local).eval().to(device, dtype)
        self.device, self.resolved = device, resolved
        self.dim = int(self.model.config.hidden_size)
        self.max_length = min(int(self.tokenizer.model_max_length), int(self.model.config.max_position_embeddings))
        check_dim(resolved.role, spec, self.dim)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        if self.device.type == "cpu":
            # CPU matmuls round differently with 1 and 2 threads (~1e-7); one thread makes a clip's vector the
            # same in every process (a Dask worker runs with OMP_NUM_THREADS=1) at no real cost for short texts
            previous = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return self._encode(texts)
            finally:
                torch.set_num_threads(previous)
        return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()


TEXT_FACTORIES = {"bert": BertEncoder}


def load_text(spec: EncoderSpec, device: torch.device, dtype: torch.dtype) -> BertEncoder:
    return build(TEXT_FACTORIES, spec, "text", device, dtype)


BERT_TOKENIZER = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
"""The files of a BERT WordPiece tokenizer as transformers saves it."""
BERT_FAMILIES = ("bert-base",)
"""Checkpoint families ``save_random_bert`` knows the shape of: bert-base-* is transformers' ``BertConfig`` default
(12 layers, 768 wide, 12 heads, 3,072 feed-forward)."""


def save_random_bert(name: str, tokenizer: Path, out: Path, seed: int) -> Path:
    """A text encoder without the hub: a model of ``name``'s shape (a ``BERT_FAMILIES`` checkpoint) with seeded random
    weights and ``tokenizer``'s files (its vocabulary size), saved to ``out`` as a local folder for
    ``extract.text.path``. A text encoder needs a tokenizer, so it cannot be random-initialised by name alone; what
    it costs to run does not depend on the weights."""
    from transformers import BertConfig, BertModel

    family = next((f for f in BERT_FAMILIES if f in name.lower()), None)
    if family is None:
        raise EncoderError(f"extract.text: no shape known for {name!r} without the hub (known: "
                           f"{', '.join(f + '-*' for f in BERT_FAMILIES)}); give extract.text.path")
    missing = [f for f in BERT_TOKENIZER if not (Path(tokenizer) / f).is_file()]
    if missing:
        raise EncoderError(f"{tokenizer}: not a BERT tokenizer folder (no {', '.join(missing)})")
    vocab = len((Path(tokenizer) / "vocab.txt").read_text(encoding="utf-8").splitlines())
    with torch.random.fork_rng(devices=[]):  # the weights are drawn on the CPU
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=vocab))
    model.save_pretrained(out)
    for f in BERT_TOKENIZER:
        shutil.copy(Path(tokenizer) / f, Path(out) / f)
    return Path(out)
