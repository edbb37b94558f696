"""Stages sent to other Prefect work pools (a worker on another checkout, a pool nobody serves) and two flow
runs on one checkout, against one real Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from emi.config import load_params
from tests.pipeline.recipe import DVC, PREFECT, clone, clone_env, outcomes, recipe, sh


@pytest.mark.slow
def test_a_stage_sent_to_another_work_pool_runs_on_its_worker_and_is_restored_in_the_flows_checkout(
        tmp_path, prefect_api):
    # two machines in miniature: the flow's checkout with its worker (pool-here), and a second checkout whose
    # worker serves pool-gpu (scripts/prefect-local.sh --worker); one Prefect server, one DVC remote
    remote = tmp_path / "remote"
    here, gpu = clone(tmp_path / "here", remote), clone(tmp_path / "gpu", remote)
    home = gpu / ".prefect"
    env = {**clone_env(gpu), "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(home), "EMI_WORK_POOL": "pool-gpu"}
    worker = subprocess.Popen([str(gpu / "scripts/prefect-local.sh"), "--worker"], cwd=gpu, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        ready = worker.stdout.readline()  # printed once emi-stage/pool-gpu is deployed, as the worker starts
        assert ready.startswith("worker of pool pool-gpu"), ready + worker.stdout.read()
        log = recipe(here, prefect_api, "--stage", "download", "--stage", "transcribe",
                     "--set", "orchestration.pools={transcribe: pool-gpu}")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
    gpu_log = (home / "logs" / "worker.log").read_text()
    # the GPU worker restored transcribe's missing input (download) from the remote and ran transcribe; the flow's
    # checkout restored it
    assert outcomes(gpu_log) == {"download": ["restored from DVC's run-cache"], "transcribe": ["ran its command"]}, \
        gpu_log[-3000:]
    assert outcomes(log) == {"download": ["ran its command"], "transcribe": ["restored from DVC's run-cache"]}, log
    assert "stage 'transcribe': sent to work pool 'pool-gpu'" in log
    assert "Data and pipelines are up to date" in sh(DVC, "status", "download", "transcribe", cwd=here)
    table = "data/transcripts/transcripts.csv"
    assert (here / table).read_bytes() == (gpu / table).read_bytes()
    # the worker logs to a store of its own: its stage run sits under a parent tagged with the flow run
    from mlflow import MlflowClient

    from emi.tracking.runs import FLOW_RUN_TAG

    client = MlflowClient(f"sqlite:///{gpu / 'mlflow.db'}")
    exp = client.get_experiment_by_name(load_params(gpu / "params.yaml").tracking.experiment)
    tagged = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("emi.pool_stage") == "transcribe"]
    assert len(tagged) == 1 and tagged[0].data.tags[FLOW_RUN_TAG]


@pytest.mark.slow
def test_a_pooled_stage_without_a_deployment_or_a_worker_fails_naming_the_pool(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from emi.orchestration.dvc import PipelineError
    from emi.orchestration.pools import run_on_pool

    checkout = clone(tmp_path / "idle", None)
    env = {**clone_env(checkout), "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(checkout / ".prefect"),
           "EMI_REPO": str(checkout)}
    for cmd in ([PREFECT, "work-pool", "create", "pool-idle", "--type", "process", "--overwrite"],
                [PREFECT, "--no-prompt", "deploy", "flows/emi_flow.py:emi_stage", "--name", "pool-idle",
                 "--pool", "pool-idle"]):
        done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with pytest.raises(PipelineError, match="has no deployment emi-stage/pool-none: on a worker machine"):
            run_on_pool("pool-none", "download", {}, 5)
        started = time.monotonic()
        with pytest.raises(PipelineError, match=r"no worker of work pool 'pool-idle' started flow run "
                                                r"download@pool-idle within 3 s"):
            run_on_pool("pool-idle", "download", {"stage": "download", "tree": "x", "params_yaml": ""}, 3)
        assert time.monotonic() - started < 60
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        assert [r.state.type.value for r in runs if r.name == "download@pool-idle"] == ["CANCELLED"]


@pytest.mark.slow
def test_two_runs_on_one_checkout_take_turns(tmp_path, prefect_api):
    checkout = clone(tmp_path / "busy", None)
    log = recipe(checkout, prefect_api, "--stage", "download", "--runs", "2")
    assert "another pipeline run holds this checkout (flow run" in log
    assert sorted(outcomes(log)["download"]) == ["ran its command", "up to date"]
    assert "Data and pipelines are up to date" in sh(DVC, "status", "download", cwd=checkout)
    assert not (checkout / ".dvc/tmp/emi-pipeline.json").exists()
