"""``emi.orchestration.dvc`` on real DVC repositories (git + dvc init + one-line stages): what ``dvc repro`` did, read
from ``dvc status --json``, the run-cache and dvc.lock; waiting for DVC's own lock; the DVC internals it uses."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emi.orchestration.dvc import DvcPipeline, PipelineError

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


def set_n(repo: Path, n: int) -> None:
    (repo / "params.yaml").write_text(f"# how many files\nn: {n}  # keep this comment\nname: null\n")


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

    set_n(repo, 5)
    assert pipeline.repro("make").outcome == "ran"
    set_n(repo, 3)  # seen before: DVC's run-cache has it
    assert pipeline.stale("make") and not pipeline.needs_run("make")
    assert pipeline.repro("make").outcome == "restored" and pipeline.output_hashes()["make"]["out"] == md5
    assert not pipeline.stale("make")


@pytest.mark.slow  # dvc subprocesses
def test_the_run_cache_check_is_dvcs_own_and_restores_only_what_it_has_seen(repo):
    """``restorable`` calls a DVC internal (``repo.stage_cache.restore``): this fails when DVC changes it."""
    pipeline = DvcPipeline(repo)
    pipeline.repro("make")
    md5 = pipeline.output_hashes()["make"]["out"]
    set_n(repo, 4)
    assert not pipeline.restorable("make")  # never run with n=4: the command must run
    assert pipeline.repro("make").outcome == "ran"
    set_n(repo, 3)
    sh("rm", "-rf", "out", cwd=repo)
    assert pipeline.restorable("make") and (repo / "out" / "2.txt").read_text() == "2"  # checked out on the way
    assert pipeline.repro("make").outcome == "restored" and pipeline.output_hashes()["make"]["out"] == md5


@pytest.mark.slow  # dvc subprocesses
def test_a_missing_dependency_reproduces_the_upstream_stages_too(repo):
    pipeline = DvcPipeline(repo)
    for stage in pipeline.stages():
        pipeline.repro(stage)
    sh("rm", "-rf", "out", "count.txt", cwd=repo)  # a fresh checkout on another worker has neither
    assert pipeline.producers(["out/1.txt", "seed.txt"]) == ["make"]
    run = pipeline.repro("count")  # make first (its output is count's dependency), then count: both seen before
    assert run.outcome == "restored" and "--single-item" in run.command
    assert (repo / "count.txt").read_text() == "3" and not pipeline.stale("make") and not pipeline.stale("count")


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


def test_source_tree_is_the_code_of_head_whatever_the_commit(repo, tmp_path):
    other = tmp_path / "other"
    sh("git", "clone", "-q", str(repo), str(other), cwd=tmp_path)
    sh("git", "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-q", "--amend", "-m", "same code", cwd=other)
    assert DvcPipeline(other).source_tree() == DvcPipeline(repo).source_tree()
    (other / "seed.txt").write_text("2")
    sh("git", "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qam", "other code", cwd=other)
    assert DvcPipeline(other).source_tree() != DvcPipeline(repo).source_tree()
