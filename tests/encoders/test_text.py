"""The text encoder: packaged MiniLM, attention-masked mean of the last hidden states."""

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec, load_params
from emi.encoders.base import EncoderError
from emi.encoders.text import BertEncoder, load_text

pytestmark = pytest.mark.slow  # loads MiniLM (imports transformers)

CPU = torch.device("cpu")


def test_packaged_minilm_encodes_each_text_independently_of_its_batch():
    enc = load_text(load_params(None, profile="tiny").extract.text, CPU, torch.float32)
    assert isinstance(enc, BertEncoder) and enc.resolved.source == "packaged" and enc.dim == 384
    alone = enc.encode(["I am so happy today."])
    batch = enc.encode(["That was a long and terribly sad story about a lost dog.", "I am so happy today."])
    assert alone.shape == (1, 384) and batch.shape == (2, 384)
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)  # padding must not leak into the mean
    assert not np.allclose(batch[0], batch[1], atol=1e-2)


def test_a_text_encoder_cannot_be_random():
    with pytest.raises(EncoderError, match="needs at least a tokenizer"):
        load_text(EncoderSpec(kind="bert", name="unpackaged", pretrained="random", allow_random_init=True, dim=384), CPU, torch.float32)
