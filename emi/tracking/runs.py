"""MLflow at the edges: stage code calls these few functions; no other module imports mlflow.

One parent run per pipeline run, one nested run per stage. DVC runs every stage in its own process, so the
parent cannot be handed down in memory: it is the run named by ``EMI_MLFLOW_PARENT_RUN_ID`` (the Prefect flow
sets it), else the newest RUNNING run tagged with this pipeline's key (params + git commit), else a new one.
The model registry is ``emi.tracking.registry``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from emi.config import Params, flatten
from emi.utils import fingerprint

PARENT_ENV = "EMI_MLFLOW_PARENT_RUN_ID"
PIPELINE_KEY_TAG = "emi.pipeline_key"
STAGE_TAG = "emi.stage"
DATA_TAG = "emi.data_fingerprint"
FLOW_RUN_TAG = "emi.prefect_flow_run_id"
DVC_OUT_TAG = "emi.dvc"  # emi.dvc.<stage>.<output path> = the output's md5 in dvc.lock
MAX_PARAM_VALUE = 6000
BATCH = 100  # MLflow's limit on params/tags per log_batch (metrics: 1000)


# ----------------------------------------------------------------------------- store and experiment
def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def _artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a sqlite store (absolute: runs started from any cwd land in one place)."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server or file store decides for itself
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.resolve().parent / "mlartifacts").as_uri()


def configure(params: Params) -> MlflowClient:
    """Point MLflow at the store and make the experiment current; safe to call from every stage."""
    uri = tracking_uri(params)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # DVC/Prefect logs are no terminal
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).resolve().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = params.tracking.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException:
            pass  # another process created it between our get and create
        exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    return client


def experiment_id(client: MlflowClient, params: Params) -> str:
    return client.get_experiment_by_name(params.tracking.experiment).experiment_id


# ----------------------------------------------------------------------------- pipeline parent, stage children
def git_commit(cwd: Path | None = None) -> str:
    """HEAD's hash of the checkout at ``cwd`` (default: the working directory), or ``nogit``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True,
                             cwd=cwd)
        return out.stdout.strip() or "nogit"
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def pipeline_key(params: Params, commit: str | None = None) -> str:
    return fingerprint({"params": flatten(params), "commit": commit or git_commit()})


def param_key(key: str) -> str:
    # MLflow names allow [\w./ :-]; latent_correlation keys hold '~' ("Joy~Amusement")
    return re.sub(r"[^\w./ :-]", "_", key)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_VALUE]


def log_params_once(client: MlflowClient, run_id: str, params: Params) -> None:
    """Log the flattened params, skipping keys already there (MLflow params are immutable)."""
    logged = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in ((param_key(k), _param_value(v)) for k, v in flatten(params).items())
           if k not in logged]
    for start in range(0, len(new), BATCH):
        client.log_batch(run_id, params=new[start:start + BATCH])


def _find_parent(client: MlflowClient, params: Params, key: str) -> str | None:
    if run_id := os.environ.get(PARENT_ENV):
        return run_id
    runs = client.search_runs(
        [experiment_id(client, params)],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def pipeline_run(params: Params, client: MlflowClient | None = None, fresh: bool = False,
                 tags: dict[str, str] | None = None) -> str:
    """The parent run id for this pipeline run, created (with all params logged) if there is none;
    ``fresh`` always starts a new one (a Prefect flow run is one pipeline run) with ``tags`` added."""
    client = client or configure(params)
    commit = git_commit()
    key = pipeline_key(params, commit)
    run_id = None if fresh else _find_parent(client, params, key)
    if run_id is None:
        tags = {PIPELINE_KEY_TAG: key, "emi.profile": params.profile, **(tags or {})}
        if commit != "nogit":
            tags["mlflow.source.git.commit"] = commit
        run = client.create_run(experiment_id(client, params), tags=tags,
                                run_name=f"pipeline {params.profile} {key[:8]}")
        run_id = run.info.run_id
    log_params_once(client, run_id, params)
    return run_id


@contextlib.contextmanager
def stage_run(params: Params, stage: str, data_fingerprint: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The stage's nested run, active inside the block; an exception marks it FAILED and propagates.

    The parent stays RUNNING after a failure, so a rerun of the same pipeline lands under it.
    """
    client = configure(params)
    parent = pipeline_run(params, client)
    tags = {"mlflow.parentRunId": parent, STAGE_TAG: stage, "emi.profile": params.profile}
    if key := client.get_run(parent).data.tags.get(PIPELINE_KEY_TAG):
        tags[PIPELINE_KEY_TAG] = key
    if data_fingerprint:
        tags[DATA_TAG] = data_fingerprint
    child = client.create_run(experiment_id(client, params), tags=tags, run_name=stage)
    # nested=True: tolerate an enclosing active run (a Prefect flow running stages in-process)
    run = mlflow.start_run(run_id=child.info.run_id, nested=True)
    try:
        yield run
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        mlflow.end_run(status)
        raise
    mlflow.end_run("FINISHED")


def has_run(params: Params, run_id: str) -> bool:
    """Whether this store holds ``run_id`` (a worker on another machine may log to another store)."""
    client = configure(params)
    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def tag_outputs(params: Params, run_id: str, hashes: dict[str, str], stage: str) -> None:
    """The DVC hash (md5 in dvc.lock) of each of ``stage``'s outputs as tags of the parent run: the lineage of
    what this pipeline run produced or restored."""
    client = configure(params)
    for path, md5 in hashes.items():
        if md5:
            client.set_tag(run_id, param_key(f"{DVC_OUT_TAG}.{stage}.{path}"), md5)


def finish_pipeline(params: Params, status: str = "FINISHED", run_id: str | None = None) -> str | None:
    """End this pipeline's parent run (evaluate, the last stage, calls it); the parent's id, or None."""
    client = configure(params)
    run_id = run_id or _find_parent(client, params, pipeline_key(params))
    if run_id is not None:
        client.set_terminated(run_id, status=status)
    return run_id


# ----------------------------------------------------------------------------- metrics and artifacts
def numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    item = value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else None
    return isinstance(item, int | float) and not isinstance(item, bool)  # numpy / torch scalars (torch has no .kind)


def _active_run_id(run_id: str | None) -> str | None:
    if run_id:
        return run_id
    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_history(rows: list[dict], step_key: str = "epoch", run_id: str | None = None) -> None:
    """Per-epoch metrics with the epoch as step; a no-op outside a run (stage code calls it unconditionally)."""
    if (run_id := _active_run_id(run_id)) is None:
        return
    now = int(dt.datetime.now().timestamp() * 1000)
    metrics = [Metric(param_key(k), float(v), now, int(row[step_key])) for row in rows for k, v in row.items()
               if k != step_key and numeric(v)]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def log_metrics(metrics: dict[str, Any], run_id: str | None = None) -> None:
    """Numeric entries only (stage metrics also hold strings such as ``fusion``); no-op outside a run."""
    if (run_id := _active_run_id(run_id)) is None:
        return
    values = {param_key(k): float(v) for k, v in metrics.items() if numeric(v)}  # "recall@1" -> "recall_1"
    if values:
        now = int(dt.datetime.now().timestamp() * 1000)
        MlflowClient().log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])


def log_artifacts(paths: list[Path | str], run_id: str | None = None) -> None:
    """Files, or folders (kept under their own name); missing ones are skipped; no-op outside a run."""
    if (run_id := _active_run_id(run_id)) is None:
        return
    client = MlflowClient()
    for path in map(Path, paths):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))


def tracked(stage: str):
    """Run a stage function (``params`` first) inside its nested MLflow run and log what its result reports.

    MLflow stays at the edge: the stage's result may offer ``tracking() -> {metrics, history, artifacts}``;
    nothing inside the stage imports mlflow.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(params, *args, **kwargs):
            with stage_run(params, stage):
                result = fn(params, *args, **kwargs)
                info = result.tracking() if hasattr(result, "tracking") else {}
                log_metrics(info.get("metrics", {}))
                log_history(info.get("history", []))
                log_artifacts([a for a in info.get("artifacts", []) if a is not None])
            return result

        return run

    return wrap
