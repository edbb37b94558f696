"""The Prefect side for real: one Prefect server, the local recipe (pool, deployments, process worker,
`prefect deployment run emi/full`) in clones of this working tree, each flow task reproducing a DVC stage; a
second clone restoring everything from a shared DVC remote; two runs on one checkout; Dask fan-out."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from emi.config import load_params
from emi.orchestration.dvc import DvcPipeline
from emi.params_yaml import use
from tests.conftest import REPO, clone_working_tree

DVC = str(Path(sys.executable).parent / "dvc")
PREFECT = str(Path(sys.executable).parent / "prefect")
# 8 clips of 5 persons: splits take whole persons, and this draw gives valid and test 2 clips each
SMALL = ["download.synthetic.n_clips=8", "download.synthetic.people.count=5"]
RECIPE_SETTINGS = ["--profile", "tiny", *[a for kv in SMALL for a in ("--set", kv)]]
STAGES = ["download", "transcribe", "extract", "stage1", "augment", "stage2", "ablate", "evaluate"]
# files every stage's numbers end up in: equal bytes = equal metrics
RESULTS = ["reports/metrics.json", "reports/scores.json", "models/stage2/metrics.json",
           "models/stage2/predictions.csv", "models/stage1/metrics.json", "reports/ablation.json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One Prefect server for every clone of this module."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false", "DO_NOT_TRACK": "1"}
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        pytest.fail("the Prefect server did not start")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


def clone(path: Path, remote: Path | None) -> Path:
    path.mkdir()
    clone_working_tree(path)
    if remote is not None:
        sh(DVC, "remote", "add", "--local", "--default", "shared", str(remote), cwd=path)
    return path


def sh(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=clone_env(cwd))
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def clone_env(checkout: Path) -> dict[str, str]:
    """Each clone runs its own code (not the editable install's) and logs to its own MLflow store, as separate
    checkouts do."""
    env = {k: v for k, v in os.environ.items() if k != "EMI_MLFLOW_PARENT_RUN_ID"}
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml's `emi ...` commands
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{checkout / 'mlflow.db'}", "PYTHONPATH": str(checkout),
            "PATH": path}


def recipe(checkout: Path, api: str, *args: str) -> str:
    """scripts/prefect-local.sh of that checkout against the shared server; returns the worker's log."""
    home = checkout / ".prefect"
    shutil.rmtree(home, ignore_errors=True)
    env = {**clone_env(checkout), "PREFECT_API_URL": api, "PREFECT_HOME": str(home),
           "EMI_WORK_POOL": f"pool-{checkout.name}"}
    done = subprocess.run([str(checkout / "scripts/prefect-local.sh"), *RECIPE_SETTINGS, "--timeout", "900", *args],
                          cwd=checkout, capture_output=True, text=True, env=env, timeout=1200)
    worker = (home / "logs" / "worker.log").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:] + worker[-4000:]
    return worker


def outcomes(worker_log: str) -> dict[str, list[str]]:
    """stage -> what each task said DVC did with it, in order (emi.orchestration.dvc.StageOutcome.summary)."""
    out: dict[str, list[str]] = {}
    for stage, what in re.findall(r"stage '(\w+)': (ran its command|restored from DVC's run-cache|up to date)",
                                  worker_log):
        out.setdefault(stage, []).append(what)
    return out


@pytest.mark.slow
def test_the_flow_is_the_dvc_pipeline_and_a_second_clone_restores_it_from_the_remote(tmp_path, prefect_api):
    remote = tmp_path / "remote"
    first, second = clone(tmp_path / "first", remote), clone(tmp_path / "second", remote)
    # the reference: a plain `dvc repro` of the same commit and params in a clone of its own, run meanwhile
    reference = clone(tmp_path / "reference", None)
    use("tiny", SMALL, reference / "params.yaml")
    plain = subprocess.Popen([DVC, "repro"], cwd=reference, env=clone_env(reference), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)

    cold = time.perf_counter()
    log = recipe(first, prefect_api)
    cold = time.perf_counter() - cold
    assert outcomes(log) == {s: ["ran its command"] for s in STAGES}, log[-3000:]
    assert "registered emi-fusion v1" in log  # the flow's last task: the registry, outside every DVC output
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=first)
    repro = sh(DVC, "repro", cwd=first)
    assert "Running stage" not in repro and all(f"Stage '{s}' didn't change" in repro for s in STAGES)
    assert "in sync" in sh(DVC, "status", "--cloud", cwd=first)  # the flow pushed every output
    assert "Everything is up to date" in sh(DVC, "push", cwd=first)

    # a fresh checkout elsewhere: same commit, same remote, one Prefect server; nothing is recomputed
    restore = time.perf_counter()
    log = recipe(second, prefect_api)
    restore = time.perf_counter() - restore
    assert outcomes(log) == {s: ["restored from DVC's run-cache"] for s in STAGES}, log[-3000:]
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=second)

    out, _ = plain.communicate(timeout=1200)
    assert plain.returncode == 0, out[-3000:]
    for rel in RESULTS:  # bit-identical metrics: the flow, its restore, and a plain dvc repro
        assert (first / rel).read_bytes() == (second / rel).read_bytes() == (reference / rel).read_bytes(), rel
    # every output of one commit is bit-identical across runs and MLflow stores (DVC's hashes): the first clone's
    # store holds a registered model, the reference's none
    assert DvcPipeline(first).output_hashes() == DvcPipeline(reference).output_hashes()
    print(f"\ncold Prefect run {cold:.0f} s, second-clone restore {restore:.0f} s")

    # lineage: the flow run's MLflow parent run names the Prefect flow run and the DVC hash of every output
    from mlflow import MlflowClient

    from emi.tracking.runs import FLOW_RUN_TAG, PIPELINE_KEY_TAG

    client = MlflowClient(f"sqlite:///{first / 'mlflow.db'}")
    params = load_params(first / "params.yaml")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    parents = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
               if PIPELINE_KEY_TAG in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags.get(FLOW_RUN_TAG)
    tags = parents[0].data.tags
    hashes = DvcPipeline(first).output_hashes()
    assert tags["emi.dvc.extract.data/features"] == hashes["extract"]["data/features"]
    assert tags["emi.dvc.stage2.models/stage2/model.pt"] == hashes["stage2"]["models/stage2/model.pt"]
    assert tags["mlflow.source.git.commit"] == sh("git", "rev-parse", "HEAD", cwd=first).strip()

    # DVC's own tools on the result: the headline fits a screen, an experiment changes one param and reruns only the
    # stages that read it, and after switching profiles `dvc params diff` lists the values that changed
    metrics = json.loads(sh(DVC, "metrics", "show", "--json", cwd=first))
    (workspace,) = metrics.values()  # DVC 3 keys the workspace as ""
    values = workspace["data"]["reports/metrics.json"]["data"]
    assert len(values) <= 25 and list(workspace["data"]) == ["reports/metrics.json"]
    experiment = sh(DVC, "exp", "run", "-S", "stage2.width=64", cwd=first)
    ran = set(re.findall(r"Running stage '(\w+)'", experiment))
    assert ran == {"stage2", "ablate", "evaluate"}, experiment[-3000:]
    assert load_params(first / "params.yaml").stage2.width == 64
    use("paper", [], first / "params.yaml")
    diff = json.loads(sh(DVC, "params", "diff", "--json", cwd=first))["params.yaml"]
    assert diff["extract.visual.name"] == {"old": "mini-xception", "new": "ViT-B-16"}
    assert (diff["stage2.width"]["old"], diff["stage2.width"]["new"]) == (128, 256)  # numbers also get a "diff"


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


@pytest.mark.slow
def test_dask_fanout_leaves_every_shard_finished_for_the_dvc_stage(tiny_dataset, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from emi.features.store import load_features
    from emi.paths import Layout
    from emi.stages.extract import extract
    from flows.emi_flow import dask_runner, extract_shards
    from tests.conftest import transcripts_from_script

    params = load_params(None, profile="tiny", overrides=["extract.shard_size=4", "orchestration.dask.n_workers=2"])
    single = tmp_path / "single"
    extract(params, tiny_dataset, transcripts_from_script(tiny_dataset, tmp_path / "tr.csv"), single / "features",
            None, show_progress=False)

    fanned = Layout(tmp_path / "fanned")
    (fanned.raw.parent).mkdir(parents=True)
    fanned.raw.symlink_to(tiny_dataset)
    fanned.transcripts.mkdir(parents=True)
    transcripts_from_script(tiny_dataset, fanned.transcripts_table)
    with prefect_test_harness(server_startup_timeout=120):
        out = extract_shards.with_options(task_runner=dask_runner(params))(params, fanned)
    assert out["shards"] == 3
    # what DVC's extract stage then runs: every shard is found finished by its receipt
    recorded = extract(params, fanned.raw, fanned.transcripts_table, fanned.features, None, show_progress=False)
    assert recorded.shards_done_now == {"visual": 0, "audio": 0, "text": 0}
    a, b = load_features(single / "features"), load_features(fanned.features)
    assert a.ids == b.ids
    for x, y in zip([*a.visual, *a.audio], [*b.visual, *b.audio], strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.text, b.text)


def test_the_recipe_and_deployments_name_the_flow_of_this_repo():
    import yaml

    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["full"]["entrypoint"] == "flows/emi_flow.py:emi"
    assert deployments["ablation"]["parameters"] == {"stages": ["ablate"]}
