"""The ``emi`` command line: one command per pipeline stage, each calling the stage's plain function."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console

from emi.config import ConfigError, Params, available_profiles, load_params

app = typer.Typer(
    name="emi",
    help="Emotional Mimicry Intensity pipeline: stages you can run one by one (dvc.yaml calls the same).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
params_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(params_app, name="params")
validate_app = typer.Typer(help="Run a data-validation checkpoint on its own.", no_args_is_help=True)
app.add_typer(validate_app, name="validate")
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file layered over its profile.")]
ProfileOpt = Annotated[
    Optional[str],
    typer.Option("--profile", help=f"profile to use instead of params.yaml's `profile` ({', '.join(available_profiles())})."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override any key, e.g. --set download.synthetic.n_clips=40 (repeatable)."),
]


def _load(params_path: Path, profile: str | None, overrides: list[str] | None) -> Params:
    path: Path | None = params_path
    if not params_path.exists() and params_path == Path("params.yaml"):
        path = None  # outside a checkout: the profile alone
    try:
        return load_params(path, overrides or [], profile=profile)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def download(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    out: Annotated[Path, typer.Option(help="dataset folder to (re)create in the Hume-Vidmimic2 layout.")] = Path("data/raw"),
    reports: Annotated[Path, typer.Option(help="folder for the validation report (download.json/.md).")] = Path(
        "reports/validation"),
    source: Annotated[Optional[str], typer.Option(help="synthetic | local | url (default: download.source).")] = None,
    local_path: Annotated[Optional[Path], typer.Option(help="Hume-Vidmimic2 folder for --source local.")] = None,
    url: Annotated[Optional[str], typer.Option(help="archive URL (http, https, file) for --source url.")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="expected sha256 of the archive for --source url.")] = None,
    n_clips: Annotated[Optional[int], typer.Option(help="number of clips for --source synthetic.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (default: seed in params).")] = None,
    max_error_fraction: Annotated[
        Optional[float], typer.Option(help="fail when more than this fraction of rows has a problem.")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars.")] = True,
) -> None:
    """Get the dataset into OUT (generate, copy/link a local copy, or download an archive) and validate it."""
    from emi.download import DownloadError
    from emi.download import download as run_download
    from emi.validation import DataValidationError

    extra = list(overrides or [])
    for key, value in (("download.source", source), ("download.local.path", local_path), ("download.url.url", url),
                       ("download.url.sha256", sha256), ("download.synthetic.n_clips", n_clips), ("seed", seed),
                       ("download.validation.max_error_fraction", max_error_fraction)):
        if value is not None:
            extra.append(f"{key}={json.dumps(str(value)) if isinstance(value, (str, Path)) else value}")
    params = _load(params_path, profile, extra)
    try:
        result = run_download(params, out, reports, show_progress=progress)
    except DataValidationError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except DownloadError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(result.report.summary(), highlight=False)
    console.print(f"{result.source} dataset ready in {result.raw_dir} ({result.seconds:.1f} s); "
                  f"report: {result.report.md_path}", highlight=False)


@validate_app.command("raw")
def validate_raw_cmd(
    raw: Annotated[Path, typer.Argument(help="dataset folder in the Hume-Vidmimic2 layout.")] = Path("data/raw"),
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    reports: Annotated[Path, typer.Option(help="folder for download.json/.md.")] = Path("reports/validation"),
) -> None:
    """Check a dataset folder (splits, labels, ids, readable videos) without fetching anything."""
    from emi.validation import validate_raw

    params = _load(params_path, profile, overrides)
    report = validate_raw(raw, params.download.validation, reports)
    console.print(report.summary(), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


@params_app.command("show")
def params_show(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    section: Annotated[Optional[str], typer.Argument(help="only this top-level section, e.g. download.")] = None,
) -> None:
    """Print the fully resolved configuration (profile + params.yaml + overrides) as YAML."""
    data = _load(params_path, profile, overrides).model_dump(mode="json")
    if section is not None:
        if section not in data:
            console.print(f"[red]error:[/red] no section {section!r}; sections: {', '.join(data)}")
            raise typer.Exit(2)
        data = {section: data[section]}
    typer.echo(yaml.safe_dump(data, sort_keys=False))


if __name__ == "__main__":
    app()
