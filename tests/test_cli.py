"""The `emi` command line: every stage is a command, configuration is inspectable, and user errors are one
readable message with a non-zero exit code, never a traceback."""

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emi.cli import app
from emi.config import load_params
from tests.conftest import EMI

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "transcribe", "extract", "stage1", "augment", "stage2", "ablate", "evaluate")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def test_params_show_prints_the_resolved_configuration():
    done = invoke("params", "show", "--profile", "tiny", "--set", "stage2.width=64")
    assert done.exit_code == 0, done.output
    shown = yaml.safe_load(done.stdout)
    want = load_params(None, ["stage2.width=64"], profile="tiny").model_dump(mode="json")
    assert shown == want and shown["stage2"]["width"] == 64
    section = invoke("params", "show", "--profile", "tiny", "data")
    assert section.exit_code == 0 and yaml.safe_load(section.stdout) == {"data": want["data"]}
    missing = invoke("params", "show", "--profile", "tiny", "nope")
    assert missing.exit_code == 2 and "no section 'nope'" in missing.output


def test_bad_set_key_exits_2_with_a_one_line_error():
    done = invoke("params", "show", "--profile", "tiny", "--set", "stage2.widht=64")
    assert done.exit_code == 2 and "Traceback" not in done.output
    head, problem = error_lines(done.output)  # the header, then one line per problem
    assert head == "error: invalid configuration:"
    assert "stage2.widht: unknown key (did you mean stage2.width?)" in problem


def test_old_config_keys_are_rejected_by_name():
    """download.validation.* and extract.silence_dbfs moved to the data section."""
    for key, named in (("download.validation.max_error_fraction=0.5", "download.validation: unknown key"),
                       ("extract.silence_dbfs=-50", "extract.silence_dbfs: unknown key")):
        done = invoke("params", "show", "--profile", "tiny", "--set", key)
        assert done.exit_code == 2 and named in done.output, done.output
    assert invoke("params", "show", "--profile", "tiny", "--set", "data.silence_dbfs=-50").exit_code == 0


def test_help_lists_every_stage_and_every_dvc_stage_is_a_command():
    done = invoke("--help")
    assert done.exit_code == 0
    for command in (*STAGES, "predict", "params", "validate", "registry", "bench"):
        assert f" {command} " in done.output, command
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]
        assert invoke(command, "--help").exit_code == 0, (name, command)


def test_evaluate_takes_the_layout_root_and_registers_nothing():
    done = invoke("evaluate", "--help")
    assert done.exit_code == 0 and "--root" in done.output and "--register" not in done.output
    assert "--raw" not in done.output and "--models" not in done.output
    assert invoke("registry", "register", "--help").exit_code == 0


def test_evaluate_without_the_earlier_stages_is_a_one_line_error_naming_the_stage(tmp_path):
    done = invoke("evaluate", "--profile", "tiny", "--root", str(tmp_path), "--no-progress")
    assert done.exit_code == 1 and "Traceback" not in done.output
    (line,) = [ln for ln in error_lines(done.output) if ln.startswith("error:")]
    assert "models/stage1/alignment.pt: not found; the stage1 stage makes it (`emi stage1`" in line


def test_register_without_a_pipeline_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = invoke("registry", "register", "--profile", "tiny", "--root", str(tmp_path))
    assert done.exit_code == 1 and "Traceback" not in done.output
    (line,) = [ln for ln in error_lines(done.output) if ln.startswith("error:")]
    assert "alignment.pt: not found; run the pipeline first" in line


def test_indivisible_transformer_width_is_a_one_line_message_from_the_console_script(tmp_path):
    """The installed `emi`, as a user runs it (not a terminal: 80 columns), prints the problem on one line."""
    done = subprocess.run([EMI, "params", "show", "--profile", "tiny", "--set", "stage2.width=130"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stdout == ""
    head, problem = error_lines(done.stderr)
    assert head == "error: invalid configuration:"
    assert "stage2" in problem and "width 130 must be divisible by transformer_heads 4" in problem


def test_unknown_registry_version_or_alias_is_one_line_not_an_mlflow_traceback(tmp_path, monkeypatch):
    """A real (empty, then one-version) MLflow store: `registry compare 7` and `predict --model models:/…@prod`."""
    from emi.tracking import runs

    pytest.importorskip("mlflow")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv(runs.PARENT_ENV, raising=False)
    done = invoke("registry", "compare", "7", "--profile", "tiny")
    lines = [ln for ln in error_lines(done.output) if " INFO " not in ln]  # MLflow's own log of creating a store
    assert done.exit_code == 1 and "Traceback" not in done.output and len(lines) == 1, done.output
    assert "emi-fusion 7" in lines[0] and "no versions yet" in lines[0]
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not read: the model is resolved first")
    done = invoke("predict", str(video), "--model", "models:/emi-fusion@prod", "--profile", "tiny")
    lines = [ln for ln in error_lines(done.output) if " INFO " not in ln]
    assert done.exit_code == 1 and "Traceback" not in done.output and len(lines) == 1, done.output
    assert lines[0].startswith("error: models:/emi-fusion@prod:")


@pytest.mark.slow  # two runs of the console script
def test_the_paper_profile_without_the_hub_is_one_line_naming_the_key_to_set(tiny_dataset, tmp_path):
    """`emi transcribe` / `emi extract --profile paper` on a machine where the hub is off (HF_HUB_OFFLINE=1) or
    does not answer (no network), nothing cached: one error line, the rest of stderr log lines, exit 1."""
    import os
    import re
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_HOME": str(tmp_path / "hf")}
    transcripts = tmp_path / "transcripts.csv"
    transcripts.write_text("id,text,status\n")
    hint = "(on a machine with the hub: emi models fetch --to DIR, with this run's --profile/--params)"
    runs = [(base | {"HF_HUB_OFFLINE": "1"}, ["transcribe", "--out", str(tmp_path / "tr")],
             f"transcribe.asr: faster-whisper 'large-v3-turbo' is not on this machine and the hub cannot be reached: "
             f"set transcribe.asr.path to a local copy {hint}"),
            (base | {"HF_ENDPOINT": closed},
             ["extract", "--transcripts", str(transcripts), "--out", str(tmp_path / "features")],
             f"extract.visual: open_clip 'ViT-B-16' ('openai' weights) is not on this machine and the hub cannot be "
             f"reached: set extract.visual.path to a local copy {hint}")]
    for env, command, message in runs:
        done = subprocess.run([EMI, *command, "--profile", "paper", "--raw", str(tiny_dataset), "--reports",
                               str(tmp_path / "reports"), "--no-progress"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = error_lines(done.stderr)
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert [ln for ln in lines if ln.startswith("error:")] == [f"error: {message}"], done.stderr
        logged = re.compile(r"^(\d{4}/\d\d/\d\d \S+ )?(INFO|WARNING) ")  # ours, and MLflow's (dated)
        assert all(logged.match(ln) for ln in lines if not ln.startswith("error:")), done.stderr
