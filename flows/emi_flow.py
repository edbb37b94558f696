"""Prefect flow ``emi``: the pipeline's stages as tasks (wiring only; the logic lives in ``emi``).

Tasks call the same stage functions as the CLI and ``dvc.yaml`` (not ``dvc repro <stage>``): that is what lets
extraction fan out over shards on Dask, and every stage is resumable on its own (fingerprinted parts, shards
and checkpoints), so a retried task or a later ``dvc repro`` reuses what is already done.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from emi.config import Params, load_params
from emi.contracts.report import render_markdown
from emi.paths import Layout
from emi.report.markdown import md_table


def _params(params_path: str, profile: str | None, overrides: list[str]) -> Params:
    return load_params(params_path if Path(params_path).exists() else None, overrides, profile=profile)


def _publish(report, key: str) -> None:
    create_markdown_artifact(key=key, markdown=render_markdown(report), description=f"{report.stage} validation")
    get_run_logger().info(report.summary())


def _retrying(fn, params: Params):
    return fn.with_options(retries=params.orchestration.retries,
                           retry_delay_seconds=params.orchestration.retry_delay_s)


@task(name="download")
def download_task(params: Params, paths: Layout) -> dict:
    from emi.stages.download import download

    result = download(params, paths.raw, paths.validation, show_progress=False)
    _publish(result.report, "validation-download")
    return {"raw_dir": str(result.raw_dir), "rows": result.report.n_rows, "seconds": result.seconds}


@task(name="transcribe")
def transcribe_task(params: Params, paths: Layout) -> dict:
    from emi.stages.transcribe import transcribe

    result = transcribe(params, paths.raw, paths.transcripts, paths.validation, show_progress=False)
    _publish(result.report, "validation-transcribe")
    return {"clips": result.n_clips, "seconds": result.seconds, "wer": result.report.facts.get("wer")}


@task(name="extract-shard")
def extract_shard_task(params: Params, paths: Layout, shard: int) -> int:
    from emi.stages.extract import plan_extract, run_shard

    plan = plan_extract(params, paths.raw, paths.transcripts_table, paths.features)
    return run_shard(plan, shard) if shard in plan.shards_to_run else 0


@flow(name="emi-extract", task_runner=ThreadPoolTaskRunner(max_workers=1))
def extract_flow(params: Params, paths: Layout) -> dict:
    """Extraction fanned out over shards: one task per shard on the flow's task runner (Dask when asked)."""
    from emi.stages.extract import finish_extract, plan_extract

    started = time.perf_counter()
    plan = plan_extract(params, paths.raw, paths.transcripts_table, paths.features)
    futures = extract_shard_task.map(unmapped(params), unmapped(paths), plan.shards_to_run)
    n_frames = sum(f.result() for f in futures)
    result = finish_extract(plan, time.perf_counter() - started, n_frames, paths.validation)
    _publish(result.report, "validation-extract")
    return {"clips": result.n_clips, "shards_done_now": result.shards_done_now, "seconds": result.seconds}


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


@task(name="stage1")
def stage1_task(params: Params, paths: Layout) -> dict:
    from emi.stages.stage1 import stage1

    result = stage1(params, paths.features, paths.stage1, paths.aligned, paths.raw, show_progress=False)
    return {"seconds": result.seconds, **{k: v for k, v in result.metrics.items() if "recall" in k}}


@task(name="stage2")
def stage2_task(params: Params, paths: Layout) -> dict:
    from emi.stages.stage2 import stage2

    result = stage2(params, paths.aligned_file, paths.raw, paths.stage2, show_progress=False)
    return {"seconds": result.seconds, **result.metrics}


@task(name="ablate")
def ablate_task(params: Params, paths: Layout) -> dict:
    from emi.report.markdown import ablation_markdown
    from emi.stages.ablate import ablation

    table = ablation(params, paths.aligned_file, paths.raw, paths.reports, stage2_model=paths.fusion_model,
                     models_dir=paths.ablation_models)
    create_markdown_artifact(key="ablation", markdown=ablation_markdown(table), description="Table 3 grid")
    return {"rows": len(table)}


@task(name="evaluate")
def evaluate_task(params: Params, paths: Layout) -> dict:
    from emi.stages.evaluate import evaluate

    result = evaluate(params, paths, register=True, show_progress=False)
    flat = result.flat_metrics()
    create_markdown_artifact(key="report", markdown=Path(result.paths["report"]).read_text(), description="report")
    return {"metrics": {k: v for k, v in flat.items() if k.startswith(("valid_", "test_", "fraction"))},
            "registry": result.registry}


@flow(name="emi")
def emi(params_path: str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None,
        root: str = ".", ablate: bool = False) -> dict:
    """The whole pipeline: download -> transcribe -> extract -> stage1 -> stage2 (-> ablation grid)."""
    from emi.tracking import runs as tracking

    params = _params(params_path, profile, overrides or [])
    paths = Layout(Path(root))
    log = get_run_logger()
    # one MLflow parent run for this flow run; every stage task nests under it
    os.environ[tracking.PARENT_ENV] = tracking.pipeline_run(params, fresh=True)
    try:
        out = {"download": _retrying(download_task, params)(params, paths)}
        out["transcribe"] = _retrying(transcribe_task, params)(params, paths)
        extract = extract_flow
        if params.orchestration.extract_fanout == "dask":
            extract = extract_flow.with_options(task_runner=dask_runner(params))
        out["extract"] = extract(params, paths)
        out["stage1"] = _retrying(stage1_task, params)(params, paths)
        out["stage2"] = _retrying(stage2_task, params)(params, paths)
        if ablate:
            out["ablate"] = ablate_task(params, paths)
        out["evaluate"] = evaluate_task(params, paths)
    except BaseException:
        tracking.finish_pipeline(params, "FAILED")
        raise
    finally:
        os.environ.pop(tracking.PARENT_ENV, None)
    metrics = [{"metric": k, "value": v} for k, v in out["evaluate"]["metrics"].items()]
    create_markdown_artifact(key="metrics", markdown=md_table(metrics) + "\n", description="evaluation")
    log.info("pipeline finished in %s (pid %d)", root, os.getpid())
    return out


@flow(name="emi-ablation")
def emi_ablation(params_path: str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None,
                 root: str = ".") -> dict:
    """The ablation grid on the features the last full run produced."""
    params = _params(params_path, profile, overrides or [])
    return {"ablate": ablate_task(params, Layout(Path(root)))}


if __name__ == "__main__":
    emi()
