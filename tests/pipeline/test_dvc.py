"""The DVC side for real: a DVC repo with a pipeline stage, a local remote, push, lose everything, pull."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DVC = str(Path(sys.executable).parent / "dvc")
REPO = Path(__file__).resolve().parents[2]


def sh(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_dvc_yaml_lists_every_stage_with_its_params():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    order = ["download", "transcribe", "extract", "stage1", "augment", "stage2", "ablate", "evaluate"]
    assert [s for s in stages if s in order] == order
    for name, stage in stages.items():
        assert stage["cmd"].startswith("emi "), name
        assert all(isinstance(p, str) for p in stage["params"]), name  # params.yaml's keys only
        # DVC's run-cache (restoring a stage instead of running it, here or from the remote) skips a stage with a
        # persistent or uncached output
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if isinstance(out, dict):
                    ((path, opts),) = out.items()
                    assert not opts.get("persist") and opts.get("cache", True), f"{name}: {path} {opts}"


@pytest.mark.slow
def test_push_then_pull_round_trips_outputs_through_a_local_remote(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    sh(DVC, "init", "-q", cwd=repo)
    sh(DVC, "config", "core.analytics", "false", cwd=repo)
    sh(DVC, "remote", "add", "--local", "--default", "local", str(remote), cwd=repo)
    (repo / "params.yaml").write_text("n: 3\n")
    sh(DVC, "stage", "add", "-n", "make", "-p", "n", "-o", "out",
       f"{sys.executable} -c \"import pathlib; p = pathlib.Path('out'); p.mkdir(); "
       f"[(p / f'{{i}}.txt').write_text(str(i) * 1000) for i in range(3)]\"", cwd=repo)
    sh(DVC, "repro", "-q", cwd=repo)
    sh(DVC, "push", "-q", cwd=repo)
    before = {p.name: p.read_bytes() for p in (repo / "out").iterdir()}
    shutil.rmtree(repo / "out")
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(DVC, "pull", "-q", cwd=repo)
    assert {p.name: p.read_bytes() for p in (repo / "out").iterdir()} == before
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=repo)
