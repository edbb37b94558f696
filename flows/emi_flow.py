"""Prefect flow ``emi``: the pipeline's stages as tasks (wiring only; the logic lives in ``emi``)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from emi.config import load_params
from emi.download import download
from emi.validation import render_markdown


@task(name="download", retries=2, retry_delay_seconds=10)
def download_task(params_path: str, profile: str | None, overrides: list[str], out: str, reports: str) -> dict:
    params = load_params(params_path if Path(params_path).exists() else None, overrides, profile=profile)
    result = download(params, Path(out), Path(reports), show_progress=False)
    create_markdown_artifact(key="validation-download", markdown=render_markdown(result.report),
                             description="raw-data validation")
    get_run_logger().info(result.report.summary())
    return {"raw_dir": str(result.raw_dir), "rows": result.report.n_rows, "seconds": result.seconds}


@flow(name="emi")
def emi(params_path: str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None,
        raw_dir: str = "data/raw", reports_dir: str = "reports/validation") -> dict:
    return {"download": download_task(params_path, profile, overrides or [], raw_dir, reports_dir)}


if __name__ == "__main__":
    emi()
