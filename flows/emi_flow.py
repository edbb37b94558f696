"""Prefect flow ``emi``: one task per DVC stage of dvc.yaml (wiring only; the logic lives in ``emi``).

Each task runs ``dvc repro --single-item <stage>`` in the checkout (``emi.orchestration.dvc``), so DVC decides what is
stale, runs the stage's ``emi`` command and records dvc.lock and its cache: after a flow run ``dvc status`` is
clean and ``dvc repro`` does nothing. With a default DVC remote, a task restores a stage DVC has seen before from
the remote's run-cache instead of running it, and pushes what it produced. Extraction fans out first: one task
per shard on Dask (``orchestration.extract_fanout: dask``); the DVC extract stage then finds every shard finished
by its receipt and records the store.

``orchestration.pools`` sends stages to other work pools (e.g. extract/stage1/stage2 to a GPU pool): the flow runs
the pool's ``emi-stage/<pool>`` deployment (flow ``emi-stage``: the same stage task, in the worker's checkout of the
same code), which pushes its outputs and run-cache to the DVC remote; the flow's own stage task then restores them
here, so this checkout's dvc.lock, cache and MLflow parent run hold the whole pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow, get_run_logger, runtime, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from emi.config import Params, load_params
from emi.orchestration.dvc import DvcPipeline, PipelineError
from emi.orchestration.lock import pipeline_lock
from emi.orchestration.pools import check_pools, run_on_pool
from emi.params_yaml import set_values, use
from emi.paths import Layout
from emi.report.tables import md_table

FANOUT_STAGE = "extract"


@task(name="dvc-stage", task_run_name="{stage}")
def stage_task(params: Params, stage: str, remote: bool) -> dict:
    """Reproduce one DVC stage (restored from the remote when DVC has seen it), push it, publish its report."""
    pipeline = DvcPipeline(Path.cwd(), params.orchestration.lock_wait_s, get_run_logger())
    run = pipeline.repro(stage, pull=remote)
    if remote:
        pipeline.push(stage)
    report = Layout().validation / f"{stage}.md"
    if report.is_file():
        create_markdown_artifact(key=f"validation-{stage}", markdown=report.read_text(encoding="utf-8"),
                                 description=f"{stage} validation")
    return {"outcome": run.outcome, "seconds": round(run.seconds, 2)}


@task(name="register")
def register_task(params: Params) -> dict:
    """The pipeline's last step, outside every DVC output: the model into the MLflow registry (once per model)."""
    from emi.tracking.registry import register_outputs

    decision = register_outputs(params, Layout())
    get_run_logger().info("%s %s v%s; champion v%s (%s)", "registered" if decision["new"] else "already registered:",
                          decision["model"], decision["version"], decision["champion_version"], decision["reason"])
    return {"outcome": f"v{decision['version']}" + (" (new)" if decision["new"] else ""), "seconds": ""}


@task(name="extract-shard")
def extract_shard_task(params: Params, paths: Layout, shard: int) -> int:
    from emi.features.extraction import plan_extract, run_shard

    plan = plan_extract(params, paths.raw, paths.transcripts_table, paths.features)
    return run_shard(plan, shard) if shard in plan.shards_to_run else 0


@flow(name="emi-extract-shards", task_runner=ThreadPoolTaskRunner(max_workers=1))
def extract_shards(params: Params, paths: Layout) -> dict:
    """The extraction shards DVC's extract stage will need, one task per shard (Dask when asked)."""
    from emi.features.extraction import plan_extract

    plan = plan_extract(params, paths.raw, paths.transcripts_table, paths.features)
    futures = extract_shard_task.map(unmapped(params), unmapped(paths), plan.shards_to_run)
    return {"shards": len(plan.shards_to_run), "frames": sum(f.result() for f in futures)}


def dask_runner(params: Params):
    import dask
    from prefect_dask import DaskTaskRunner

    d = params.orchestration.dask
    if d.address:
        return DaskTaskRunner(address=d.address)
    # Dask's nanny pins OMP/MKL/OpenBLAS to one thread in each worker it spawns; CTranslate2's (whisper) kernels
    # then round differently (audio features moved by up to 3e-5), so fanned-out shards would not equal a
    # single-process `emi extract`. Local workers keep this process's thread environment instead.
    dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 65536}})
    return DaskTaskRunner(cluster_kwargs={"n_workers": d.n_workers, "threads_per_worker": d.threads_per_worker,
                                          "processes": True, "dashboard_address": None})


def run_stage(params: Params, pipeline: DvcPipeline, stage: str, remote: bool) -> dict[str, dict]:
    """One stage in this checkout: the Dask fan-out first where asked and needed, then its DVC stage task."""
    out: dict[str, dict] = {}
    if stage == FANOUT_STAGE and params.orchestration.extract_fanout == "dask" and pipeline.needs_run(stage,
                                                                                                      pull=remote):
        with pipeline.repo_lock():
            out["extract-shards"] = extract_shards.with_options(task_runner=dask_runner(params))(params, Layout())
    retrying = stage_task.with_options(retries=params.orchestration.retries,
                                       retry_delay_seconds=params.orchestration.retry_delay_s)
    out[stage] = retrying(params, stage, remote)
    return out


@flow(name="emi")
def emi(profile: str | None = None, overrides: list[str] | None = None, stages: list[str] | None = None) -> dict:
    """The DVC pipeline of this checkout (the flow's working directory), stage by stage; ``stages`` picks a subset
    (dvc.yaml's order is kept). ``profile`` / ``overrides`` (``key=value``) are written into params.yaml first
    (``emi params use`` / ``emi params set``), so DVC sees and records them. Stages ``orchestration.pools`` names run
    on those work pools first and are then restored here from the DVC remote. When the last stage is among those
    run, the model is registered last (``emi registry register``: outside every DVC output)."""
    from emi.tracking import runs as tracking

    log = get_run_logger()
    flow_run = str(runtime.flow_run.id)
    pipeline = DvcPipeline(Path.cwd(), logger=log)
    with pipeline_lock(pipeline.root, load_params("params.yaml").orchestration.lock_wait_s,
                       {"flow run": flow_run}, log):
        params_yaml = pipeline.root / "params.yaml"
        params = use(profile, overrides or [], params_yaml) if profile else set_values(overrides or [], params_yaml)
        todo = pipeline.select(stages)
        remote = params.orchestration.use_remote and pipeline.has_remote()  # restore from it and push to it
        pools = params.orchestration.pools
        check_pools(pools, pipeline.stages(), remote)
        # one MLflow parent run for this flow run: every stage command DVC runs nests under it
        parent = tracking.pipeline_run(params, fresh=True, tags={tracking.FLOW_RUN_TAG: flow_run})
        os.environ[tracking.PARENT_ENV] = parent
        out: dict[str, dict] = {}
        try:
            for stage in todo:
                if stage in pools:  # that pool's worker runs it and pushes it; the stage task below restores it
                    out[f"{stage}@{pools[stage]}"] = run_on_pool(pools[stage], stage, {
                        "stage": stage, "tree": pipeline.source_tree(),
                        "params_yaml": (pipeline.root / "params.yaml").read_text(encoding="utf-8"),
                        "parent_run": parent, "flow_run": flow_run}, params.orchestration.pool_start_timeout_s, log)
                out.update(run_stage(params, pipeline, stage, remote))
                tracking.tag_outputs(params, parent, pipeline.output_hashes().get(stage, {}), stage)
            if todo[-1:] == pipeline.stages()[-1:]:  # the whole pipeline ran: its model goes to the registry
                out["register"] = register_task(params)
        except BaseException:
            tracking.finish_pipeline(params, "FAILED", run_id=parent)
            raise
        finally:
            os.environ.pop(tracking.PARENT_ENV, None)
        tracking.finish_pipeline(params, "FINISHED", run_id=parent)
    rows = [{"stage": s, "outcome": r.get("outcome", ""), "seconds": r.get("seconds", "")} for s, r in out.items()]
    create_markdown_artifact(key="stages", markdown=md_table(rows) + "\n", description="what DVC did per stage")
    metrics = Layout().reports / "metrics.json"
    if metrics.is_file():
        flat = json.loads(metrics.read_text())
        create_markdown_artifact(key="metrics", markdown=md_table([{"metric": k, "value": v} for k, v in flat.items()])
                                 + "\n", description="evaluation (reports/metrics.json)")
    log.info("pipeline finished in %s: %s", pipeline.root, ", ".join(f"{s} {r['outcome']}" for s, r in out.items()
                                                                     if "outcome" in r))
    return out


@flow(name="emi-stage")
def emi_stage(stage: str, tree: str, params_yaml: str, parent_run: str | None = None,
              flow_run: str | None = None) -> dict:
    """One DVC stage, sent by flow ``emi`` to this deployment's work pool (``orchestration.pools``), in the
    worker's checkout: the same code (git tree ``tree``) and the flow's params.yaml. Inputs come from the DVC
    remote, the outputs and run-cache go back to it. Stage runs nest under the flow's MLflow parent run when this
    worker logs to the same store, else under a parent of their own tagged with the flow run."""
    from emi.tracking import runs as tracking

    log = get_run_logger()
    pipeline = DvcPipeline(Path.cwd(), logger=log)
    with pipeline_lock(pipeline.root, load_params("params.yaml").orchestration.lock_wait_s,
                       {"flow run": str(runtime.flow_run.id)}, log, inside=flow_run):
        here = pipeline.source_tree()
        if here != tree:
            raise PipelineError(f"{pipeline.root}: this worker's checkout holds other code (git tree {here[:12]}) "
                                f"than the flow run's ({tree[:12]}); check out the flow's commit here")
        params_file = pipeline.root / "params.yaml"
        if params_file.read_text(encoding="utf-8") != params_yaml:
            params_file.write_text(params_yaml, encoding="utf-8")  # the flow's params: the same DVC stage hashes
        params = load_params(params_file)
        if not (params.orchestration.use_remote and pipeline.has_remote()):
            raise PipelineError(f"{pipeline.root}: stage '{stage}' was sent to this worker, whose checkout has no "
                                "default DVC remote: its outputs could not go back (`dvc remote add -d NAME URL`)")
        shared = parent_run is not None and tracking.has_run(params, parent_run)
        parent = parent_run if shared else tracking.pipeline_run(
            params, fresh=True, tags={tracking.FLOW_RUN_TAG: flow_run or "", "emi.pool_stage": stage})
        os.environ[tracking.PARENT_ENV] = parent
        try:
            out = run_stage(params, pipeline, stage, remote=True)
        except BaseException:
            if not shared:
                tracking.finish_pipeline(params, "FAILED", run_id=parent)
            raise
        finally:
            os.environ.pop(tracking.PARENT_ENV, None)
        if not shared:
            tracking.finish_pipeline(params, "FINISHED", run_id=parent)
    return out


if __name__ == "__main__":
    emi()
