"""`emi models fetch`: every hub model a configuration loads, downloaded into one folder in the layout the
path-based loaders read, on a machine with the hub, for one without it (an air-gapped GPU cluster). The result is
``{"<role>.path": folder}``, the keys to set where the copy lands."""

from __future__ import annotations

import logging
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path

from emi.config import MODALITIES, EncoderSpec, Params
from emi.encoders.base import EncoderError, Resolved, hub_failures, hub_reachable, resolve

log = logging.getLogger(__name__)


def encoder_specs(params: Params) -> dict[str, EncoderSpec]:
    """Every encoder the pipeline loads, by role (the key its ``path`` sits under)."""
    return {"transcribe.asr": params.transcribe.asr, **{f"extract.{m}": getattr(params.extract, m) for m in MODALITIES}}


def hub_models(params: Params) -> dict[str, Resolved]:
    """The encoders that would load from the hub: no ``path`` set, no packaged copy, not random."""
    found = {}
    for role, spec in encoder_specs(params).items():
        if spec.path is None and (resolved := resolve(spec, role)).source == "hub":
            found[role] = resolved
    return found


def target(to: Path, resolved: Resolved) -> Path:
    """Where a model goes: ``DIR/<role>/<name>[--<weights>]``, hub ids' slashes as ``--`` (as in the hub cache),
    so that two profiles' models for one role can share DIR."""
    name = resolved.name if resolved.location in (None, resolved.name) else f"{resolved.name}--{resolved.location}"
    return to / resolved.role / name.replace("/", "--")


def transformers_files(repo_files: list[str]) -> list[str]:
    """What ``from_pretrained`` reads from a transformers repo: its configuration, tokenizer and vocabulary files and
    the PyTorch weights once (safetensors where the repo has them, else ``pytorch_model*.bin``); not the
    TensorFlow, Flax, Rust, ONNX or Core ML copies many hub repos also hold."""
    top = [f for f in repo_files if "/" not in f]
    safetensors = [f for f in top if f.endswith(".safetensors")]
    weights = safetensors or [f for f in top if f.startswith("pytorch_model") and f.endswith(".bin")]
    unused_index = ".bin.index.json" if safetensors else ".safetensors.index.json"
    meta = [f for f in top if f.endswith((".json", ".txt", ".model")) and not f.endswith(unused_index)]
    return sorted(meta + weights)


def _ctranslate2(resolved: Resolved, folder: Path) -> None:
    import faster_whisper

    with warnings.catch_warnings():  # it passes local_dir_use_symlinks, which huggingface_hub now ignores
        warnings.simplefilter("ignore", UserWarning)
        faster_whisper.download_model(resolved.location, output_dir=str(folder))


def _transformers(resolved: Resolved, folder: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    files = transformers_files(HfApi().list_repo_files(resolved.location))
    snapshot_download(resolved.location, local_dir=folder, allow_patterns=files)


def _open_clip(resolved: Resolved, folder: Path) -> None:
    from emi.encoders.visual import open_clip_weights

    open_clip_weights(resolved.name, resolved.location, local_dir=folder)


DOWNLOADERS: dict[str, Callable[[Resolved, Path], None]] = {
    "faster-whisper": _ctranslate2,  # faster_whisper.download_model: the CTranslate2 folder WhisperModel reads
    "whisper-encoder": _ctranslate2,
    "wav2vec2": _transformers,  # a snapshot of the repo: the folder from_pretrained reads
    "bert": _transformers,
    "open_clip": _open_clip,  # the checkpoint file open_clip's tag names, alone in its folder
}


def not_fetched(resolved: Resolved) -> str:
    from huggingface_hub import constants

    return (f"{resolved.role}: cannot fetch {resolved.model}: the hub ({constants.ENDPOINT}) cannot be reached from "
            f"this machine (no network, or HF_HUB_OFFLINE set): fetch where it can, then copy DIR here")


def fetch(params: Params, to: Path) -> dict[str, Path]:
    """Download every hub model ``params`` loads into ``to``; ``{"<role>.path": folder}`` in the pipeline's order."""
    models = hub_models(params)
    if models and not hub_reachable():  # fail before the first download, naming the first model
        raise EncoderError(not_fetched(next(iter(models.values()))))
    paths = {}
    for role, resolved in models.items():
        folder = target(Path(to), resolved)
        folder.mkdir(parents=True, exist_ok=True)
        log.info("%s: fetching %s into %s", role, resolved.model, folder)
        with hub_failures(resolved, not_fetched(resolved)):
            DOWNLOADERS[resolved.kind](resolved, folder)
        paths[f"{role}.path"] = folder.resolve()
    return paths


def params_use_command(profile: str, paths: dict[str, Path]) -> str:
    """The command that writes the fetched paths into params.yaml (where the copy lands, if DIR moved: edit)."""
    return " ".join(["emi params use", shlex.quote(profile),
                     *(f"--set {shlex.quote(f'{key}={path}')}" for key, path in paths.items())])
