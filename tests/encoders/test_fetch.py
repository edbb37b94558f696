"""`emi models fetch`: which models a profile takes from the hub, where each goes, which files, and one line where
the hub cannot be reached (the downloads themselves need the hub: they cannot run here)."""

import os
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emi.cli import app
from emi.config import load_params
from emi.encoders.base import EncoderError, hub_failures
from emi.encoders.fetch import (DOWNLOADERS, fetch, hub_models, not_fetched, params_use_command, target,
                                transformers_files)
from tests.conftest import EMI

PAPER_FOLDERS = {
    "transcribe.asr.path": "transcribe.asr/large-v3-turbo",
    "extract.visual.path": "extract.visual/ViT-B-16--openai",
    "extract.audio.path": "extract.audio/facebook--wav2vec2-large-960h",
    "extract.text.path": "extract.text/bert-base-uncased",
}


def test_every_hub_model_of_the_profile_gets_its_own_folder_and_key(tmp_path):
    models = hub_models(load_params(None, profile="paper"))
    assert {f"{role}.path": target(tmp_path, r) for role, r in models.items()} == {
        key: tmp_path / folder for key, folder in PAPER_FOLDERS.items()}
    assert [r.kind for r in models.values()] == ["faster-whisper", "open_clip", "wav2vec2", "bert"]
    # a path already set, or a packaged model, is not fetched; the embedded profile fetches nothing
    (tmp_path / "bert").mkdir()
    some = hub_models(load_params(None, [f"extract.text.path={tmp_path / 'bert'}"], profile="paper"))
    assert list(some) == ["transcribe.asr", "extract.visual", "extract.audio"]
    assert hub_models(load_params(None, profile="embedded")) == {}
    assert fetch(load_params(None, profile="embedded"), tmp_path / "models") == {}
    done = CliRunner().invoke(app, ["models", "fetch", "--profile", "embedded", "--to", str(tmp_path / "m")])
    assert done.exit_code == 0 and "nothing to fetch: profile 'embedded'" in done.output


def test_the_printed_command_sets_every_fetched_path():
    paths = {"transcribe.asr.path": Path("/models/transcribe.asr/large-v3-turbo"),
             "extract.text.path": Path("/my models/extract.text/bert-base-uncased")}
    assert params_use_command("paper", paths) == (
        "emi params use paper --set transcribe.asr.path=/models/transcribe.asr/large-v3-turbo "
        "--set 'extract.text.path=/my models/extract.text/bert-base-uncased'")


def test_a_transformers_snapshot_takes_configs_tokenizer_and_one_copy_of_the_weights():
    bert_base_uncased = [  # the hub repo's files (coreml/ holds more)
        ".gitattributes", "LICENSE", "README.md", "config.json",
        "coreml/fill-mask/float32_model.mlpackage/Manifest.json", "flax_model.msgpack", "model.onnx",
        "model.safetensors", "pytorch_model.bin", "rust_model.ot", "tf_model.h5", "tokenizer.json",
        "tokenizer_config.json", "vocab.txt"]
    assert transformers_files(bert_base_uncased) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    wav2vec2_without_safetensors = [
        ".gitattributes", "README.md", "config.json", "feature_extractor_config.json", "preprocessor_config.json",
        "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5", "tokenizer_config.json", "vocab.json"]
    assert transformers_files(wav2vec2_without_safetensors) == [
        "config.json", "feature_extractor_config.json", "preprocessor_config.json", "pytorch_model.bin",
        "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
               "pytorch_model.bin.index.json"]
    assert transformers_files(sharded) == ["config.json", "model-00001-of-00002.safetensors",
                                           "model-00002-of-00002.safetensors", "model.safetensors.index.json"]


@pytest.mark.slow  # imports faster-whisper, open_clip and transformers
def test_each_download_that_loses_the_hub_is_one_line_naming_its_model(tmp_path, no_hub):
    """What fetch wraps every download in: with the hub gone mid-way, the hub clients' real errors become the line."""
    for role, resolved in hub_models(load_params(None, profile="paper")).items():
        with pytest.raises(EncoderError) as caught:
            with hub_failures(resolved, not_fetched(resolved)):
                DOWNLOADERS[resolved.kind](resolved, tmp_path / role)
        assert str(caught.value).startswith(f"{role}: cannot fetch {resolved.model}: the hub")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two runs of the console script
def test_fetch_without_the_hub_fails_in_one_line_naming_the_first_model(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_HOME": str(tmp_path / "hf")}
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for env, hub in ((base | {"HF_HUB_OFFLINE": "1"}, "https://huggingface.co"),
                     (base | {"HF_ENDPOINT": endpoint}, endpoint)):  # no network: nothing answers
        done = subprocess.run([EMI, "models", "fetch", "--profile", "paper", "--to", str(tmp_path / "models")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr.splitlines() == [
            f"error: transcribe.asr: cannot fetch faster-whisper 'large-v3-turbo': the hub ({hub}) cannot be reached "
            "from this machine (no network, or HF_HUB_OFFLINE set): fetch where it can, then copy DIR here"]
        assert not (tmp_path / "models").exists()


def test_fetched_paths_are_written_into_the_params_file(tmp_path, monkeypatch):
    """The write half of `emi models fetch` (the downloads need the hub, which this machine cannot reach: here each
    downloader writes a file where the weights would go)."""
    import emi.encoders.fetch as fetch_module

    monkeypatch.setattr(fetch_module, "hub_reachable", lambda *a, **k: True)
    for kind in list(DOWNLOADERS):
        monkeypatch.setitem(DOWNLOADERS, kind, lambda resolved, folder: (folder / "weights").write_text("w"))
    params_yaml = tmp_path / "params.yaml"
    done = CliRunner().invoke(app, ["models", "fetch", "--profile", "paper", "--to", str(tmp_path / "models"),
                                    "--params", str(params_yaml), "--set", "download.local.path=/data/hume"])
    assert done.exit_code == 0, done.output
    written = load_params(params_yaml)
    assert written.profile == "paper" and str(written.download.local.path) == "/data/hume"
    for key, folder in PAPER_FOLDERS.items():
        section, role, _ = key.split(".")
        assert getattr(getattr(written, section), role).path == (tmp_path / "models" / folder).resolve()
    assert "emi params use paper --set transcribe.asr.path=" in done.output
