"""The MLflow model registry: the Stage-II model registered as a models-from-code pyfunc
(``emi/tracking/pyfunc.py``: weights and source, no pickles), promotion by ``tracking.promote``, and comparing
versions. Aliases: ``challenger`` is always the newest version, ``champion`` moves by the policy, and never to a
version below its floor (``tracking.floor``: by default its own run's linear probe on valid).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from emi.config import EMOTIONS, Params
from emi.tracking.runs import DATA_TAG, configure, finish_pipeline, log_metrics, numeric, param_key, stage_run
from emi.features.store import data_fingerprint
from emi.paths import Layout
from emi.utils import fingerprint, sha256_file

RUN_TAG = "emi.run_id"  # the run that logged the version (its metrics, params, artifacts)
PIPELINE_RUN_TAG = "emi.pipeline_run_id"  # its parent: one pipeline (flow) run, with the DVC output hashes
METRIC_TAG = "emi.metric."  # prefix: a version's metrics travel with it even if its run is deleted
MODEL_TAG = "emi.model_files"  # fingerprint of the two weight files: the same model is registered once
PROMOTION_TAG = "emi.promotion"  # why the version did or did not become champion when it was registered
FLOOR_METRIC = "valid_pearson_mean"  # what the floor is held against: the model's valid mean Pearson
PROBE_METRIC = "linear_probe_pearson_mean"  # the run's ridge on clip means, valid (reports/metrics.json)
MODEL_CODE = Path(__file__).with_name("pyfunc.py")
OUTPUT_COLUMNS = (*EMOTIONS, "weight_V", "weight_A", "weight_T")
COMPARE_LIMIT = 6


class TrackingError(RuntimeError):
    pass


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


def floor_of(floor: str | float | None, metrics: dict) -> tuple[float | None, str]:
    """The valid mean Pearson a champion must beat and what it is: ``tracking.floor`` ``probe`` reads the run's own
    linear probe (``PROBE_METRIC``; None when the run has none), a number is itself, None is no floor."""
    if floor is None:
        return None, "no floor"
    if floor == "probe":
        return _finite(metrics.get(PROBE_METRIC)), "the run's linear probe"
    return float(floor), "tracking.floor"


def above_floor(score: float | None, floor: str | float | None, metrics: dict) -> tuple[bool, str]:
    """Whether a version's valid mean Pearson (``FLOOR_METRIC``) is above its floor (``floor_of``), and why not."""
    value, what = floor_of(floor, metrics)
    if floor is None:
        return True, what
    if value is None:
        return False, f"floor {floor!r}: the run has no finite {PROBE_METRIC} (did the ablation run?)"
    if score is None:
        return False, f"the new version has no finite {FLOOR_METRIC} to hold against the floor"
    if score > value:
        return True, f"{FLOOR_METRIC} {score:.4f} > {what} {value:.4f}"
    ridge = ": a ridge on clip means does as well" if floor == "probe" else ""
    return False, f"{FLOOR_METRIC} {score:.4f} <= {what} {value:.4f}{ridge}"


def promotion(policy: str, new: float | None, champion: float | None, has_champion: bool,
              min_delta: float, floor: tuple[bool, str] = (True, "no floor")) -> tuple[bool, str]:
    """Whether a new version becomes champion, and why: ``never`` never; below its ``floor`` (``above_floor``'s
    answer) no policy promotes it; ``always`` then always, ``better`` when its metric beats the champion's by more
    than ``min_delta`` (or there is no champion)."""
    if policy == "never":
        return False, "promote=never"
    if not floor[0]:
        return False, f"below the floor: {floor[1]}"
    if policy == "always":
        return True, "promote=always"
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
    values = {param_key(k): float(v) for k, v in metrics.items() if numeric(v)}  # "recall@1" -> "recall_1"
    parent = client.get_run(rid).data.tags.get("mlflow.parentRunId")
    tags = {DATA_TAG: data_fingerprint, "emi.profile": params.profile, RUN_TAG: rid,
            **({PIPELINE_RUN_TAG: parent} if parent else {}),
            "emi.stage2": json.dumps(params.stage2.model_dump(mode="json"), separators=(",", ":")),
            **{METRIC_TAG + k: repr(v) for k, v in values.items()}}
    for key, value in tags.items():
        client.set_model_version_tag(t.registered_model, version, key, value)
    client.set_registered_model_alias(t.registered_model, "challenger", version)

    new = _finite(values.get(t.metric))
    floor = above_floor(_finite(values.get(FLOOR_METRIC)), t.floor, values)
    promoted, reason = promotion(t.promote, new, champion_before, champion is not None, t.min_delta, floor)
    client.set_model_version_tag(t.registered_model, version, PROMOTION_TAG,
                                 ("champion: " if promoted else "not champion: ") + reason)
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


def _first_line(exc: MlflowException) -> str:
    return str(exc.message).strip().splitlines()[0]


def _version(client: MlflowClient, name: str, ref: str):
    """A version by number or alias; an unknown one is a one-line TrackingError naming what exists."""
    try:
        return client.get_model_version(name, ref) if str(ref).isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        listed = sorted((int(mv.version) for mv in client.search_model_versions(f"name = '{name}'")))
        known = f"versions {', '.join(map(str, listed))}" if listed else "no versions yet"
        raise TrackingError(f"{name} {ref}: {_first_line(exc)} ({known})") from None


def compare_versions(params: Params, versions: list[str] | None = None) -> str:
    """Versions side by side (newest first): aliases, metrics (the linear probe's, the floor, among them), why each
    version did or did not become champion, data, and only the params that differ."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    name = params.tracking.registered_model
    client = configure(params)
    if versions:
        found = [_version(client, name, v) for v in versions]
    else:
        listed = client.search_model_versions(f"name = '{name}'")
        found = sorted(listed, key=lambda mv: int(mv.version), reverse=True)[:COMPARE_LIMIT]
        # search results may omit aliases; one get per version is cheap at this count
        found = [client.get_model_version(name, mv.version) for mv in found]
    if not found:
        return f"registered model {name!r} has no versions yet"

    metric_names = [params.tracking.metric, FLOOR_METRIC, PROBE_METRIC, "valid_mse",
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
    rows.append(("promotion", [_cell(mv.tags.get(PROMOTION_TAG)) for mv in found]))
    rows.append(("data fingerprint", [_cell(mv.tags.get(DATA_TAG)) for mv in found]))
    rows.append(("run", [_cell(runs[mv.version].info.run_name if runs[mv.version] else None) for mv in found]))
    rows.append(("run id", [_cell(mv.tags.get(RUN_TAG) or mv.run_id) for mv in found]))
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
    text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines()).strip("\n") + "\n"
    data = {mv.tags.get(DATA_TAG) for mv in found}
    if len(data) > 1:
        text += ("note: these versions were trained and scored on different data (the data fingerprints differ), "
                 "so their metrics are not comparable as equals\n")
    return text


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
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                         dst_path=str(dst_path) if dst_path else None))
    except MlflowException as exc:
        raise TrackingError(f"{model_uri}: {_first_line(exc)}") from None
    flavor = Model.load(local / "MLmodel").flavors["python_function"]
    return {name: local / spec["path"] for name, spec in flavor["artifacts"].items()}


def _registered(client: MlflowClient, name: str, model_key: str):
    """The version registered from these exact model files, if any."""
    try:
        found = client.search_model_versions(f"name = '{name}' and tag.`{MODEL_TAG}` = '{model_key}'")
    except MlflowException:  # no such registered model yet
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


def register_outputs(params: Params, layout: Layout) -> dict:
    """The pipeline's last step, outside every DVC output: register the Stage-I + Stage-II model the pipeline made
    (``layout``) with its headline metrics (``reports/metrics.json``) and data fingerprint, apply the promotion
    policy, end the pipeline's parent run. Idempotent: model files already registered (same bytes) are not
    registered again; the decision says which version they are."""
    for path in (layout.alignment_model, layout.fusion_model, layout.reports / "metrics.json"):
        if not path.is_file():
            raise TrackingError(f"{path}: not found; run the pipeline first (`dvc repro`)")
    t = params.tracking
    client = configure(params)
    model_key = fingerprint([sha256_file(layout.alignment_model), sha256_file(layout.fusion_model)])
    data = data_fingerprint(layout.raw, layout.features)[0]
    existing = _registered(client, t.registered_model, model_key)
    if existing is not None:
        champion = _champion(client, t.registered_model)
        decision = {"version": str(existing.version), "promoted": False, "new": False,
                    "champion_version": str(champion.version) if champion else None,
                    "reason": "these model files are registered already"
                              + (f"; {existing.tags[PROMOTION_TAG]}" if PROMOTION_TAG in existing.tags else "")}
    else:
        metrics = {k: v for k, v in json.loads((layout.reports / "metrics.json").read_text()).items() if numeric(v)}
        with stage_run(params, "register", data):
            decision = register_model(params, layout.alignment_model, layout.fusion_model, metrics, data)
        client.set_model_version_tag(t.registered_model, decision["version"], MODEL_TAG, model_key)
        decision["new"] = True
    decision["parent_run_id"] = finish_pipeline(params)
    decision["model"] = t.registered_model
    return decision
