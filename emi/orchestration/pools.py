"""Stages on other Prefect work pools (``orchestration.pools``): the flow runs a pool's ``emi-stage/<pool>``
deployment for the stage and waits; the worker's outputs come back through the DVC remote."""

from __future__ import annotations

import logging
import time

from emi.orchestration.dvc import PipelineError

log = logging.getLogger(__name__)

STAGE_FLOW = "emi-stage"  # the flow a work pool runs one stage with: its deployment there is emi-stage/<pool>
POOL_POLL_S = 2.0


def pool_deployment(pool: str) -> str:
    return f"{STAGE_FLOW}/{pool}"


def check_pools(pools: dict[str, str], stages: list[str], remote: bool) -> None:
    """``orchestration.pools`` names stages of dvc.yaml, and the DVC remote their outputs come back through."""
    unknown = sorted(set(pools) - set(stages))
    if unknown:
        raise PipelineError(f"orchestration.pools: no stage {', '.join(unknown)} in dvc.yaml; stages: "
                            f"{', '.join(stages)}")
    if pools and not remote:
        raise PipelineError(f"orchestration.pools sends {', '.join(f'{s} to {p}' for s, p in pools.items())}, but "
                            "this checkout has no default DVC remote (or orchestration.use_remote is false): a stage "
                            "run by another worker comes back only through one (`dvc remote add -d NAME URL`)")


def run_on_pool(pool: str, stage: str, parameters: dict, start_timeout_s: float,
                logger: logging.Logger | None = None) -> dict:
    """Run ``stage`` by its pool's ``emi-stage/<pool>`` deployment (a subflow run of the calling flow) and wait
    for it. A run no worker of the pool has started within ``start_timeout_s`` is cancelled; a run that does not
    complete is an error naming the pool, the flow run and its final state."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    logger = logger or log
    name = pool_deployment(pool)
    try:
        submitted = run_deployment(name=name, parameters=parameters, timeout=0, flow_run_name=f"{stage}@{pool}")
    except ObjectNotFound:
        raise PipelineError(f"stage '{stage}' goes to work pool '{pool}' (orchestration.pools), but the Prefect "
                            f"server has no deployment {name}: on a worker machine of that pool run "
                            f"`EMI_WORK_POOL={pool} scripts/prefect-local.sh --worker`") from None
    logger.info("stage '%s': sent to work pool '%s' (flow run %s)", stage, pool, submitted.name)
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(submitted.id)
            if run.state is not None and run.state.is_final():
                break
            if (run.state is None or run.state.is_scheduled()) and time.monotonic() - started > start_timeout_s:
                client.set_flow_run_state(submitted.id, Cancelled(message="no worker started it"), force=True)
                raise PipelineError(f"stage '{stage}': no worker of work pool '{pool}' started flow run {run.name} "
                                    f"within {start_timeout_s:.0f} s (orchestration.pool_start_timeout_s); is a "
                                    f"worker polling that pool?")
            time.sleep(POOL_POLL_S)
    seconds = time.monotonic() - started
    if not run.state.is_completed():
        raise PipelineError(f"stage '{stage}' on work pool '{pool}': flow run {run.name} ended "
                            f"{run.state.name}: {run.state.message or 'see its logs'}")
    logger.info("stage '%s': work pool '%s' finished it (flow run %s, %.1f s)", stage, pool, run.name, seconds)
    return {"outcome": f"ran on pool {pool}", "seconds": round(seconds, 2), "flow_run": run.name}


