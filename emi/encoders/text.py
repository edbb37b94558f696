"""Text encoders (one vector per transcript): BERT-family models, attention-masked mean pooling."""

from __future__ import annotations

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
