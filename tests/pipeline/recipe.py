"""What the Prefect tests share: clones of this working tree that run their own code and log to their own MLflow
store, the local recipe (scripts/prefect-local.sh: pool, deployments, process worker, `prefect deployment run
emi/full`) against one Prefect server, and what its worker log says DVC did with each stage."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import clone_working_tree

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


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A real Prefect server on a free port with its database under ``home``; yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "DO_NOT_TRACK": "1"}
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("the Prefect server did not start within 120 s")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def clone(path: Path, remote: Path | None) -> Path:
    path.mkdir()
    clone_working_tree(path)
    shutil.copy2(empty_mlflow_store(), path / "mlflow.db")  # what the first stage would create, made once
    if remote is not None:
        sh(DVC, "remote", "add", "--local", "--default", "shared", str(remote), cwd=path)
    return path


@functools.cache
def empty_mlflow_store() -> Path:
    """A new MLflow SQLite store with its tables, made once per test process: creating the tables (MLflow runs its
    database migrations) took ~10 s of CPU in every clone's first stage."""
    from mlflow import MlflowClient

    folder = tempfile.mkdtemp(prefix="emi-mlflow-")
    atexit.register(shutil.rmtree, folder, True)
    db = Path(folder) / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def sh(*cmd: str, cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=clone_env(cwd))
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def clone_env(checkout: Path) -> dict[str, str]:
    """Each clone runs its own code (not the editable install's) and logs to its own MLflow store, as separate
    checkouts do."""
    env = {k: v for k, v in os.environ.items() if k != "EMI_MLFLOW_PARENT_RUN_ID"}
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml's `emi ...` commands
    # a worker asks for scheduled runs every 2 s instead of Prefect's 10 s: the tests wait less for each pickup
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{checkout / 'mlflow.db'}", "PYTHONPATH": str(checkout),
            "PATH": path, "PREFECT_WORKER_QUERY_SECONDS": "2"}


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
    # the recipe's cleanup stops the worker (SIGTERM), it does not kill it after waiting
    assert re.search(r"Worker '[^']+' stopped!", worker), worker[-2000:]
    return worker


def outcomes(worker_log: str) -> dict[str, list[str]]:
    """stage -> what each task said DVC did with it, in order (emi.orchestration.dvc.StageOutcome.summary)."""
    out: dict[str, list[str]] = {}
    for stage, what in re.findall(r"stage '(\w+)': (ran its command|restored from DVC's run-cache|up to date)",
                                  worker_log):
        out.setdefault(stage, []).append(what)
    return out


