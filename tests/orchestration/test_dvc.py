"""``emi.orchestration.dvc`` on real DVC repositories (git + dvc init + a one-line stage): what ``dvc repro`` did, the
checkout lock, waiting for DVC's own lock, params overrides written the way ``dvc exp run -S`` writes them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emi.orchestration.dvc import (DvcPipeline, PipelineError, apply_overrides, check_pools, outcome_of, pipeline_lock,
                                   pool_deployment)

DVC = str(Path(sys.executable).parent / "dvc")


def sh(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A DVC repo with two stages: ``make`` writes out/ from params.yaml's n, ``count`` reads it."""
    root = tmp_path / "repo"
    root.mkdir()
    sh("git", "init", "-q", cwd=root)
    sh(DVC, "init", "-q", cwd=root)
    sh(DVC, "config", "core.analytics", "false", cwd=root)
    (root / "params.yaml").write_text("# how many files\nn: 3  # keep this comment\nname: null\n")
    (root / "seed.txt").write_text("1")
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  make:\n"
        f"    cmd: {sys.executable} -c \"import pathlib,yaml; n = yaml.safe_load(open('params.yaml'))['n']; "
        "p = pathlib.Path('out'); p.mkdir(); [(p / f'{i}.txt').write_text(str(i)) for i in range(n)]\"\n"
        "    params: [n]\n"
        "    deps: [seed.txt]\n"
        "    outs: [out]\n"
        "  count:\n"
        f"    cmd: {sys.executable} -c \"import pathlib; pathlib.Path('count.txt').write_text("
        "str(len(list(pathlib.Path('out').iterdir()))))\"\n"
        "    deps: [out]\n"
        "    outs: [count.txt]\n")
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=root)
    return root


def test_dvc_output_says_what_happened_to_a_stage():
    assert outcome_of("extract", ["Running stage 'extract':", "> emi extract"]) == "ran"
    assert outcome_of("extract", ["Stage 'extract' is cached - skipping run, checking out outputs"]) == "restored"
    assert outcome_of("extract", ["Pulling data for stage: 'extract'"]) == "restored"
    assert outcome_of("extract", ["Stage 'extract' didn't change, skipping"]) == "up to date"
    with pytest.raises(PipelineError, match="could not tell"):
        outcome_of("extract", ["Stage 'download' didn't change, skipping"])


@pytest.mark.slow  # dvc subprocesses
def test_stages_run_then_are_up_to_date_then_restored_from_the_run_cache(repo):
    pipeline = DvcPipeline(repo)
    assert pipeline.stages() == ["make", "count"] and pipeline.select(["count", "make"]) == ["make", "count"]
    with pytest.raises(PipelineError, match="no stage nope; stages: make, count"):
        pipeline.select(["nope"])
    assert pipeline.stale("make")
    assert [pipeline.repro(s).outcome for s in pipeline.stages()] == ["ran", "ran"]
    assert not pipeline.stale("make") and not pipeline.stale("count")
    assert pipeline.repro("make").outcome == "up to date"
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=repo)
    md5 = pipeline.output_hashes()["make"]["out"]
    assert md5.endswith(".dir")

    apply_overrides(repo / "params.yaml", ["n=5"])
    assert pipeline.repro("make").outcome == "ran"
    apply_overrides(repo / "params.yaml", ["n=3"])  # seen before: DVC's run-cache has it
    assert pipeline.stale("make") and not pipeline.needs_run("make")
    assert pipeline.repro("make").outcome == "restored" and pipeline.output_hashes()["make"]["out"] == md5
    text = (repo / "params.yaml").read_text()
    assert "# keep this comment" in text and "n: 3" in text


@pytest.mark.slow  # dvc subprocesses
def test_a_missing_dependency_reproduces_the_upstream_stages_too(repo):
    pipeline = DvcPipeline(repo)
    for stage in pipeline.stages():
        pipeline.repro(stage)
    sh("rm", "-rf", "out", "count.txt", cwd=repo)  # a fresh checkout on another worker has neither
    run = pipeline.repro("count")
    assert "--single-item" not in run.command
    assert any("Stage 'make' is cached" in line for line in run.output)
    assert (repo / "count.txt").read_text() == "3"


def test_overrides_keep_params_yaml_readable_and_refuse_unknown_keys(tmp_path):
    from emi.config import load_params

    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    apply_overrides(params_yaml, ["stage2.width=64", "profile=tiny"])
    params = load_params(params_yaml)
    assert params.stage2.width == 64 and params.profile == "tiny"
    assert "# Which named profile fills every key" in params_yaml.read_text()
    with pytest.raises(PipelineError, match="cannot apply.*stage2.nope"):
        apply_overrides(params_yaml, ["stage2.nope=1"])


@pytest.mark.slow  # dvc subprocesses
def test_a_locked_repository_is_waited_for_then_named(repo):
    holder = DvcPipeline(repo)
    waiter = DvcPipeline(repo, lock_wait_s=1.0)
    with holder.repo_lock():
        started = time.monotonic()
        with pytest.raises(PipelineError, match="another dvc process holds the repository"):
            waiter.stale("make")
        assert time.monotonic() - started >= 1.0

    patient = DvcPipeline(repo, lock_wait_s=60.0)
    release = threading.Event()

    def hold():
        with holder.repo_lock():
            release.wait(3)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.5)
    threading.Timer(2.0, release.set).start()
    assert patient.stale("make")  # waited for the lock, then answered
    t.join()


def test_a_second_pipeline_run_on_one_checkout_waits_then_stops_naming_the_first(tmp_path):
    (tmp_path / ".dvc").mkdir()
    with pipeline_lock(tmp_path, 0, {"flow run": "first-run"}):
        started = time.monotonic()
        with pytest.raises(PipelineError, match=r"another pipeline run holds this checkout \(flow run first-run, "
                                                r"pid \d+.*waited 1 s"):
            with pipeline_lock(tmp_path, 1.0, {"flow run": "second-run"}):
                pass
        assert time.monotonic() - started >= 1.0
    with pipeline_lock(tmp_path, 0, {"flow run": "third-run"}):  # released: the next run gets it at once
        pass


def test_the_run_a_checkout_is_held_for_may_use_it_and_no_other_run_may(tmp_path):
    # a pooled stage whose worker shares the flow's checkout works for the holder, which waits for it
    (tmp_path / ".dvc").mkdir()
    with pipeline_lock(tmp_path, 0, {"flow run": "flow-1"}):
        with pipeline_lock(tmp_path, 0, {"flow run": "stage-of-flow-1"}, inside="flow-1"):
            pass
        with pytest.raises(PipelineError, match="flow run flow-1"):
            with pipeline_lock(tmp_path, 0, {"flow run": "stage-of-flow-2"}, inside="flow-2"):
                pass
    with pipeline_lock(tmp_path, 0, {"flow run": "stage"}, inside="flow-1"):  # not held: taken as usual
        assert (tmp_path / ".dvc/tmp/emi-pipeline.json").is_file()


def test_pools_name_known_stages_and_need_the_remote_their_outputs_come_back_through(repo):
    stages = DvcPipeline(repo).stages()
    check_pools({}, stages, remote=False)
    check_pools({"make": "gpu"}, stages, remote=True)
    with pytest.raises(PipelineError, match="no stage train in dvc.yaml; stages: make, count"):
        check_pools({"train": "gpu"}, stages, remote=True)
    with pytest.raises(PipelineError, match="sends make to gpu, but this checkout has no default DVC remote"):
        check_pools({"make": "gpu"}, stages, remote=False)
    assert pool_deployment("gpu") == "emi-stage/gpu"


def test_source_tree_is_the_code_of_head_whatever_the_commit(repo, tmp_path):
    other = tmp_path / "other"
    sh("git", "clone", "-q", str(repo), str(other), cwd=tmp_path)
    sh("git", "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-q", "--amend", "-m", "same code", cwd=other)
    assert DvcPipeline(other).source_tree() == DvcPipeline(repo).source_tree()
    (other / "seed.txt").write_text("2")
    sh("git", "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qam", "other code", cwd=other)
    assert DvcPipeline(other).source_tree() != DvcPipeline(repo).source_tree()
