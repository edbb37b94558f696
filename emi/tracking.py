"""MLflow at the edges: stage code calls these few functions; no other module imports mlflow.

One parent run per pipeline run, one nested run per stage. DVC runs every stage in its own process, so the
parent cannot be handed down in memory: it is the run named by ``EMI_MLFLOW_PARENT_RUN_ID`` (the Prefect flow
sets it), else the newest RUNNING run tagged with this pipeline's key (params + git commit), else a new one.
The Stage-II model is registered as a models-from-code pyfunc (``emi/mlflow_model.py``): weights and source,
no pickles. Aliases: ``challenger`` is always the newest version, ``champion`` moves by ``tracking.promote``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from emi.config import EMOTIONS, Params, flatten
from emi.utils import fingerprint

PARENT_ENV = "EMI_MLFLOW_PARENT_RUN_ID"
PIPELINE_KEY_TAG = "emi.pipeline_key"
STAGE_TAG = "emi.stage"
DATA_TAG = "emi.data_fingerprint"
METRIC_TAG = "emi.metric."  # prefix: a version's metrics travel with it even if its run is deleted
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
OUTPUT_COLUMNS = (*EMOTIONS, "weight_V", "weight_A", "weight_T")
MAX_PARAM_VALUE = 6000
BATCH = 100  # MLflow's limit on params/tags per log_batch (metrics: 1000)
COMPARE_LIMIT = 6


class TrackingError(RuntimeError):
    pass


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


def _experiment_id(client: MlflowClient, params: Params) -> str:
    return client.get_experiment_by_name(params.tracking.experiment).experiment_id


# ----------------------------------------------------------------------------- pipeline parent, stage children
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or "nogit"
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def pipeline_key(params: Params, commit: str | None = None) -> str:
    return fingerprint({"params": flatten(params), "commit": commit or git_commit()})


def _param_key(key: str) -> str:
    # MLflow names allow [\w./ :-]; latent_correlation keys hold '~' ("Joy~Amusement")
    return re.sub(r"[^\w./ :-]", "_", key)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_VALUE]


def log_params_once(client: MlflowClient, run_id: str, params: Params) -> None:
    """Log the flattened params, skipping keys already there (MLflow params are immutable)."""
    logged = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in ((_param_key(k), _param_value(v)) for k, v in flatten(params).items())
           if k not in logged]
    for start in range(0, len(new), BATCH):
        client.log_batch(run_id, params=new[start:start + BATCH])


def _find_parent(client: MlflowClient, params: Params, key: str) -> str | None:
    if run_id := os.environ.get(PARENT_ENV):
        return run_id
    runs = client.search_runs(
        [_experiment_id(client, params)],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def pipeline_run(params: Params, client: MlflowClient | None = None, fresh: bool = False) -> str:
    """The parent run id for this pipeline run, created (with all params logged) if there is none;
    ``fresh`` always starts a new one (a Prefect flow run is one pipeline run)."""
    client = client or configure(params)
    commit = git_commit()
    key = pipeline_key(params, commit)
    run_id = None if fresh else _find_parent(client, params, key)
    if run_id is None:
        tags = {PIPELINE_KEY_TAG: key, "emi.profile": params.profile}
        if commit != "nogit":
            tags["mlflow.source.git.commit"] = commit
        run = client.create_run(_experiment_id(client, params), tags=tags,
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
    child = client.create_run(_experiment_id(client, params), tags=tags, run_name=stage)
    # nested=True: tolerate an enclosing active run (a Prefect flow running stages in-process)
    run = mlflow.start_run(run_id=child.info.run_id, nested=True)
    try:
        yield run
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        mlflow.end_run(status)
        raise
    mlflow.end_run("FINISHED")


def finish_pipeline(params: Params, status: str = "FINISHED") -> str | None:
    """End this pipeline's parent run (evaluate, the last stage, calls it); the parent's id, or None."""
    client = configure(params)
    run_id = _find_parent(client, params, pipeline_key(params))
    if run_id is not None:
        client.set_terminated(run_id, status=status)
    return run_id


# ----------------------------------------------------------------------------- metrics and artifacts
def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return getattr(value, "ndim", None) == 0 and value.dtype.kind in "iuf"  # numpy / torch scalars


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
    metrics = [Metric(_param_key(k), float(v), now, int(row[step_key])) for row in rows for k, v in row.items()
               if k != step_key and _numeric(v)]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def log_metrics(metrics: dict[str, Any], run_id: str | None = None) -> None:
    """Numeric entries only (stage metrics also hold strings such as ``fusion``); no-op outside a run."""
    if (run_id := _active_run_id(run_id)) is None:
        return
    numeric = {_param_key(k): float(v) for k, v in metrics.items() if _numeric(v)}  # "recall@1" -> "recall_1"
    if numeric:
        now = int(dt.datetime.now().timestamp() * 1000)
        MlflowClient().log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in numeric.items()])


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


# ----------------------------------------------------------------------------- model registry
def model_signature() -> ModelSignature:
    return ModelSignature(inputs=Schema([ColSpec("string", "video")]),
                          outputs=Schema([ColSpec("double", c) for c in OUTPUT_COLUMNS]))


def _requirements() -> list[str] | None:
    # the installed project's pinned dependencies; MLflow's own inference would import the model in a subprocess
    try:
        return [r for r in metadata.requires("emi") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _in_run(run_id: str | None) -> Iterator[str]:
    """Make ``run_id`` (default: the active run) the active run, leaving its status as it was."""
    active = mlflow.active_run()
    if run_id is None or (active is not None and active.info.run_id == run_id):
        if active is None:
            raise TrackingError("register_model needs a run: call it inside tracking.stage_run or pass run_id")
        yield active.info.run_id
        return
    client = MlflowClient()
    before = client.get_run(run_id).info.status
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield run_id
    client.update_run(run_id, status=before)  # resuming marked it RUNNING, leaving it FINISHED


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def version_metric(client: MlflowClient, version, metric: str) -> float | None:
    """A version's metric from its run, else from the tag written at registration."""
    value = None
    if version.run_id:
        with contextlib.suppress(MlflowException):
            value = client.get_run(version.run_id).data.metrics.get(metric)
    if value is None:
        value = version.tags.get(METRIC_TAG + metric)
    return _finite(value)


def promotion(policy: str, new: float | None, champion: float | None, has_champion: bool,
              min_delta: float) -> tuple[bool, str]:
    if policy == "always":
        return True, "promote=always"
    if policy == "never":
        return False, "promote=never"
    if not has_champion:
        return True, "no champion yet"
    if new is None:
        return False, "the new version has no finite value of the metric"
    if champion is None:
        return True, "the champion has no finite value of the metric"
    if new > champion + min_delta:
        return True, f"{new:.4f} > champion {champion:.4f} + min_delta {min_delta:g}"
    return False, f"{new:.4f} <= champion {champion:.4f} + min_delta {min_delta:g}"


def register_model(params: Params, stage1_path: Path, stage2_path: Path, metrics: dict, data_fingerprint: str,
                   input_example_video: str | None = None, run_id: str | None = None) -> dict:
    """Log the Stage-I + Stage-II weights as a pyfunc in the run, register it, set aliases by the policy."""
    t = params.tracking
    client = configure(params)
    champion = _champion(client, t.registered_model)
    champion_before = version_metric(client, champion, t.metric) if champion else None
    with _in_run(run_id) as rid, tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # an input example would have to run the encoders at logging time; the signature says enough
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        params_json = Path(tmp) / "params.json"
        params_json.write_text(json.dumps(params.model_dump(mode="json"), indent=2), encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),  # models-from-code: the source file is stored, no pickle
            artifacts={"alignment": str(stage1_path), "fusion": str(stage2_path), "params": str(params_json)},
            signature=model_signature(),
            metadata={"input_example_video": input_example_video} if input_example_video else None,
            pip_requirements=_requirements(),
            registered_model_name=t.registered_model,
        )
        log_metrics(metrics, rid)
    version = str(info.registered_model_version)
    numeric = {_param_key(k): float(v) for k, v in metrics.items() if _numeric(v)}  # "recall@1" -> "recall_1"
    tags = {DATA_TAG: data_fingerprint, "emi.profile": params.profile,
            "emi.stage2": json.dumps(params.stage2.model_dump(mode="json"), separators=(",", ":")),
            **{METRIC_TAG + k: repr(v) for k, v in numeric.items()}}
    for key, value in tags.items():
        client.set_model_version_tag(t.registered_model, version, key, value)
    client.set_registered_model_alias(t.registered_model, "challenger", version)

    new = _finite(numeric.get(t.metric))
    promoted, reason = promotion(t.promote, new, champion_before, champion is not None, t.min_delta)
    if promoted:
        client.set_registered_model_alias(t.registered_model, "champion", version)
    return {"version": version, "promoted": promoted,
            "champion_version": version if promoted else (str(champion.version) if champion else None),
            "metric": new, "champion_metric_before": champion_before, "reason": reason}


def _run_params(client: MlflowClient, run_id: str | None) -> dict[str, str]:
    """The version's run params over its pipeline parent's (where the flattened params.yaml lives)."""
    if not run_id:
        return {}
    run = client.get_run(run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    base = client.get_run(parent).data.params if parent else {}
    return {**base, **run.data.params}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def compare_versions(params: Params, versions: list[str] | None = None) -> str:
    """Versions side by side (newest first): aliases, metrics, data, and only the params that differ."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    name = params.tracking.registered_model
    client = configure(params)
    if versions:
        found = [client.get_model_version(name, v) if str(v).isdigit() else
                 client.get_model_version_by_alias(name, v) for v in versions]
    else:
        listed = client.search_model_versions(f"name = '{name}'")
        found = sorted(listed, key=lambda mv: int(mv.version), reverse=True)[:COMPARE_LIMIT]
        # search results may omit aliases; one get per version is cheap at this count
        found = [client.get_model_version(name, mv.version) for mv in found]
    if not found:
        return f"registered model {name!r} has no versions yet"

    metric_names = [params.tracking.metric, "valid_pearson_mean", "valid_mse",
                    *[f"valid_pearson_{e}" for e in EMOTIONS]]
    metric_names = list(dict.fromkeys(metric_names))
    runs = {mv.version: client.get_run(mv.run_id) if mv.run_id else None for mv in found}
    rows: list[tuple[str, list[str]]] = [
        ("aliases", [", ".join(mv.aliases) or "-" for mv in found]),
        ("created", [dt.datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
                     for mv in found]),
    ]
    for metric in metric_names:
        values = [version_metric(client, mv, metric) for mv in found]
        if any(v is not None for v in values):
            rows.append((metric, [_cell(v) for v in values]))
    rows.append(("data fingerprint", [_cell(mv.tags.get(DATA_TAG)) for mv in found]))
    rows.append(("run", [_cell(runs[mv.version].info.run_name if runs[mv.version] else None) for mv in found]))
    per_version = [_run_params(client, mv.run_id) for mv in found]
    keys = sorted(set().union(*per_version))
    for key in keys:
        values = [p.get(key) for p in per_version]
        if len(set(values)) > 1:
            rows.append((key, [_cell(v) for v in values]))

    table = Table(title=f"{name}: {len(found)} version(s)", box=box.SIMPLE, title_justify="left")
    table.add_column("", style="bold", overflow="fold")
    for mv in found:
        table.add_column(f"v{mv.version}", overflow="fold")
    for label, cells in rows:
        table.add_row(label, *cells)
    buf = io.StringIO()
    Console(file=buf, width=40 + 28 * len(found), color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()).strip("\n") + "\n"


def load_registered(params: Params | None, model_uri: str, dst_path: Path | None = None) -> dict[str, Path]:
    """Local paths of a registered model's files: ``alignment``, ``fusion`` (torch weights), ``params`` (JSON).

    ``params`` says which store to read (None: MLflow's current one); ``model_uri`` is e.g.
    ``models:/emi-fusion@champion`` (or ``emi-fusion@champion``, ``emi-fusion/3``).
    """
    from mlflow.models import Model

    if params is not None:
        configure(params)
    if ":/" not in model_uri:
        model_uri = f"models:/{model_uri}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                     dst_path=str(dst_path) if dst_path else None))
    flavor = Model.load(local / "MLmodel").flavors["python_function"]
    return {name: local / spec["path"] for name, spec in flavor["artifacts"].items()}


def publish(params: Params, stage1_path: Path, stage2_path: Path, metrics: dict, data_fingerprint: str,
            out: Path | None = None) -> dict:
    """The pipeline's last step: register the model (nested run ``register``), apply the promotion policy,
    end the parent run, and write the decision (``reports/registry.json``) for DVC and the report."""
    with stage_run(params, "register", data_fingerprint):
        decision = register_model(params, stage1_path, stage2_path, metrics, data_fingerprint)
    decision["parent_run_id"] = finish_pipeline(params)
    decision["model"] = params.tracking.registered_model
    if out is not None:
        from emi.utils import write_json

        write_json(out, decision)
    return decision
