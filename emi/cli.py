"""The ``emi`` command line: one command per pipeline stage, each calling the stage's plain function."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console

from emi.config import ConfigError, Params, available_profiles, load_params
from emi.paths import DEFAULT as LAYOUT
from emi.paths import ALIGNED_FILE, AUGMENTED_FILE, Layout

app = typer.Typer(
    name="emi",
    help="Emotional Mimicry Intensity pipeline: stages you can run one by one (dvc.yaml calls the same).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
params_app = typer.Typer(help="params.yaml: write it from a profile, change or show its values.", no_args_is_help=True)
app.add_typer(params_app, name="params")
validate_app = typer.Typer(help="Run a data-validation checkpoint on its own.", no_args_is_help=True)
app.add_typer(validate_app, name="validate")
bench_app = typer.Typer(help="Benchmarks that print throughput ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
registry_app = typer.Typer(help="The MLflow model registry (emi-fusion): register the pipeline's model, compare "
                                "versions.", no_args_is_help=True)
models_app = typer.Typer(help="Encoder weights for machines without the hub.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(registry_app, name="registry")
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file (every key; `emi params use` writes it).")]
ProfileOpt = Annotated[
    Optional[str],
    typer.Option("--profile", help=f"a profile's values instead of params.yaml's ({', '.join(available_profiles())})."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override any key, e.g. --set download.synthetic.n_clips=40 (repeatable)."),
]


@contextlib.contextmanager
def _fails_with(*errors: type[BaseException], code: int = 1) -> Iterator[None]:
    """The user-facing errors of a command: one red line and exit ``code``, no traceback."""
    try:
        yield
    except errors as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)  # no hard wrap at 80 columns
        raise typer.Exit(code) from None


def _load(params_path: Path, profile: str | None, overrides: list[str] | None) -> Params:
    path: Path | None = params_path
    if not params_path.exists() and params_path == Path("params.yaml"):
        path = None  # outside a checkout: the profile alone
    with _fails_with(ConfigError, code=2):
        return load_params(path, overrides or [], profile=profile)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def download(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    out: Annotated[Path, typer.Option(help="dataset folder to (re)create in the Hume-Vidmimic2 layout.")] = LAYOUT.raw,
    reports: Annotated[Path, typer.Option(help="folder for the validation report (download.json/.md).")] = (
        LAYOUT.validation),
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
    from emi.contracts.report import DataValidationError
    from emi.data.sources import DownloadError
    from emi.stages.download import download as run_download

    extra = list(overrides or [])
    for key, value in (("download.source", source), ("download.local.path", local_path), ("download.url.url", url),
                       ("download.url.sha256", sha256), ("download.synthetic.n_clips", n_clips), ("seed", seed),
                       ("data.max_error_fraction", max_error_fraction)):
        if value is not None:
            extra.append(f"{key}={json.dumps(str(value)) if isinstance(value, (str, Path)) else value}")
    params = _load(params_path, profile, extra)
    with _fails_with(DataValidationError, DownloadError):
        result = run_download(params, out, reports, show_progress=progress)
    console.print(result.report.summary(), highlight=False)
    console.print(f"{result.source} dataset ready in {result.raw_dir} ({result.seconds:.1f} s); "
                  f"report: {result.report.md_path}", highlight=False)


RawOpt = Annotated[Path, typer.Option("--raw", help="dataset folder in the Hume-Vidmimic2 layout.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="folder for the validation report (<stage>.json/.md).")]
ProgressOpt = Annotated[bool, typer.Option(help="show progress bars.")]
TrainedRootOpt = Annotated[
    Path, typer.Option(help="the pipeline layout holding data/aligned, data/augmented, data/raw.")]


def _stage_errors():
    from emi.data.dataset import DatasetError
    from emi.encoders.base import EncoderError
    from emi.stages.extract import ExtractError

    return (DatasetError, EncoderError, ExtractError)  # DataValidationError is a DatasetError


@app.command()
def transcribe(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    raw: RawOpt = LAYOUT.raw,
    out: Annotated[Path, typer.Option(help="folder for transcripts.csv (and its resumable parts/).")] = (
        LAYOUT.transcripts),
    reports: ReportsOpt = LAYOUT.validation,
    progress: ProgressOpt = True,
) -> None:
    """Speech -> text with faster-whisper (VAD, beam search); clips without audio get an empty, flagged row."""
    from emi.stages.transcribe import transcribe as run_transcribe

    params = _load(params_path, profile, overrides)
    with _fails_with(*_stage_errors()):
        result = run_transcribe(params, raw, out, reports, show_progress=progress)
    console.print(result.report.summary(), highlight=False)
    console.print(f"transcripts: {result.table} ({result.n_clips} clips, {result.seconds:.1f} s)", highlight=False)


@app.command()
def extract(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    raw: RawOpt = LAYOUT.raw,
    transcripts: Annotated[Path, typer.Option(help="transcripts table from `emi transcribe`.")] = (
        LAYOUT.transcripts_table),
    out: Annotated[Path, typer.Option(help="feature store: shards per modality + index.csv + manifest.json.")] = (
        LAYOUT.features),
    reports: ReportsOpt = LAYOUT.validation,
    progress: ProgressOpt = True,
) -> None:
    """Visual (5 fps), audio (pooled onto the same grid) and text features, in resumable shards."""
    from emi.stages.extract import extract as run_extract

    params = _load(params_path, profile, overrides)
    with _fails_with(*_stage_errors()):
        result = run_extract(params, raw, transcripts, out, reports, show_progress=progress)
    console.print(result.report.summary(), highlight=False)
    random = [r.role for r in result.encoders if r.random_init]
    console.print(f"features: {result.out_dir} ({result.n_clips} clips; shards recomputed {result.shards_done_now}; "
                  f"{result.seconds:.1f} s, {result.clips_per_s:.2f} clips/s, {result.frames_per_s:.1f} frames/s)"
                  + (f"; RANDOM weights: {', '.join(random)}" if random else ""), highlight=False)


@app.command()
def stage1(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    features: Annotated[Path, typer.Option(help="feature store from `emi extract`.")] = LAYOUT.features,
    out: Annotated[Path, typer.Option(help="folder for alignment.pt, metrics.json, history.csv.")] = LAYOUT.stage1,
    aligned: Annotated[Path, typer.Option(help="folder for the aligned sequences Stage II reads.")] = LAYOUT.aligned,
    raw: Annotated[Path, typer.Option(help="the dataset, read when stage1.finetune.last_k_blocks > 0 (the clips "
                                           "extract kept are not decoded again).")] = LAYOUT.raw,
    progress: ProgressOpt = True,
) -> None:
    """Stage I: vision<->text and audio<->text contrastive alignment (InfoNCE, SGDR); prints retrieval recall.
    With stage1.finetune.last_k_blocks > 0 the last encoder blocks are trained too, from the clips themselves."""
    from emi.stages.stage1 import stage1 as run_stage1
    from emi.train.alignment import Stage1Error
    from emi.train.finetune import FinetuneError

    params = _load(params_path, profile, overrides)
    with _fails_with(Stage1Error, FinetuneError, *_stage_errors()):  # fine-tuning decodes and encodes clips
        result = run_stage1(params, features, out, aligned, raw, show_progress=progress)
    shown = ", ".join(f"{k}={v}" for k, v in result.metrics.items() if "recall" in k or "chance" in k)
    console.print(f"stage I: {result.epochs_run} epochs in {result.seconds:.1f} s; {shown}", highlight=False)


@app.command()
def augment(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    raw: RawOpt = LAYOUT.raw,
    features: Annotated[Path, typer.Option(help="the feature store from `emi extract` (a copy keeps its clip's text "
                                                "vector unless its damage drops the text).")] = LAYOUT.features,
    alignment: Annotated[Path, typer.Option(help="the Stage-I model (its heads project the copies).")] = (
        LAYOUT.alignment_model),
    out: Annotated[Path, typer.Option(help="folder for augmented.npz and copies.csv.")] = LAYOUT.augmented,
    progress: ProgressOpt = True,
) -> None:
    """Damaged copies (occluded face, audio noise, missing audio, missing transcript) of stage2.augment.fraction of
    the training clips, for corruption-aware Stage II training; validation and test clips are never copied."""
    from emi.train.augmentation import AugmentError
    from emi.stages.augment import augment as run_augment

    params = _load(params_path, profile, overrides)
    with _fails_with(AugmentError, *_stage_errors()):
        result = run_augment(params, raw, features, alignment, out, show_progress=progress)
    console.print(f"augment: {result.made} damaged copies ({len(result.problems)} could not be made; "
                  f"{result.shards_done_now} shard(s) computed now, {result.seconds:.1f} s) in {result.out_dir}",
                  highlight=False)


@app.command()
def stage2(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    aligned: Annotated[Path, typer.Option(help="aligned.npz folder from `emi stage1`.")] = LAYOUT.aligned,
    augmented: Annotated[Path, typer.Option(help="augmented.npz folder from `emi augment` (damaged copies of "
                                                 "training clips, trained on too when present).")] = LAYOUT.augmented,
    raw: RawOpt = LAYOUT.raw,
    out: Annotated[Path, typer.Option(help="folder for model.pt, predictions.csv, metrics.json.")] = LAYOUT.stage2,
    progress: ProgressOpt = True,
) -> None:
    """Stage II: TCN + gated BiLSTM + quality-aware fusion + Transformer on the frozen Stage-I features (EMA)."""
    from emi.stages.stage2 import stage2 as run_stage2
    from emi.train.fusion import Stage2Error

    params = _load(params_path, profile, overrides)
    with _fails_with(Stage2Error):
        result = run_stage2(params, aligned / ALIGNED_FILE, raw, out, augmented / AUGMENTED_FILE,
                            show_progress=progress)
    console.print(f"stage II: {result.epochs_run} epochs in {result.seconds:.1f} s; valid mean Pearson "
                  f"{result.metrics.get('valid_pearson_mean', float('nan')):.4f}", highlight=False)


@app.command()
def ablate(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: Annotated[Path, typer.Option(help="the folder holding data/, models/ and reports/ (the pipeline layout); "
                                            "the Stage-II model is reused for the matching cell, the V+A+T cell "
                                            "models go to models/ablation/.")] = LAYOUT.root,
    modality_sets: Annotated[Optional[str], typer.Option(help="comma-separated modality subsets of the grid's rows "
                                                              "(default: V,A,T,VA,VT,AT,VAT).")] = None,
    fusions: Annotated[Optional[str], typer.Option(help="comma-separated fusions of the configured modalities "
                                                        "(default: every fusion).")] = None,
    inputs: Annotated[Optional[str], typer.Option(help="comma-separated Stage-II inputs of the configured modalities "
                                                       "(default: every input).")] = None,
) -> None:
    """The paper's Table 3: V, A, T, V+A, V+T, A+T, V+A+T (configured fusion), V+A+T with each other fusion, each
    other Stage-II input, and without the temporal blocks; next to a linear probe. The options narrow the grid
    (the pipeline runs all of it)."""
    from emi.evaluation.ablation import INPUTS, MODALITY_SETS
    from emi.model import FUSIONS
    from emi.stages.ablate import ablation

    params = _load(params_path, profile, overrides)
    layout = Layout(root)
    grid = {}
    for name, value, allowed in (("modality_sets", modality_sets, MODALITY_SETS), ("fusions", fusions, FUSIONS),
                                 ("inputs", inputs, INPUTS)):
        grid[name] = allowed if value is None else tuple(x.strip() for x in value.split(",") if x.strip())
        if unknown := [x for x in grid[name] if x not in allowed]:
            raise typer.BadParameter(f"{', '.join(unknown)} not in {', '.join(allowed)}",
                                     param_hint=f"--{name.replace('_', '-')}")
    table = ablation(params, layout.aligned_file, layout.raw, layout.reports, stage2_model=layout.fusion_model,
                     models_dir=layout.ablation_models, augmented=layout.augmented_file, **grid)
    typer.echo(table[["modalities", "fusion", "inputs", "blocks", "pearson_mean", "pearson_mean_sd", "diff_vs_full", "mse",
                      "seconds"]].to_string(index=False))


@app.command("evaluate")
def evaluate_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: Annotated[Path, typer.Option(help="the folder holding data/, models/ and reports/ (the pipeline layout).")] = (
        LAYOUT.root),
    progress: ProgressOpt = True,
) -> None:
    """Scores (+ ceiling), robustness table, probes, report, ABAW submission, the headline metrics.json. Trains and
    registers nothing: `emi registry register` registers the model."""
    from emi.evaluation.robustness import RobustnessError
    from emi.evaluation.submission import SubmissionError
    from emi.stages.evaluate import EvaluateError, evaluate

    params = _load(params_path, profile, overrides)
    with _fails_with(EvaluateError, RobustnessError, SubmissionError, *_stage_errors()):
        result = evaluate(params, Layout(root), show_progress=progress)
    flat = result.flat_metrics()
    console.print(f"valid mean Pearson {flat.get('valid_pearson_mean', float('nan')):.4f}, test "
                  f"{flat.get('test_pearson_mean', float('nan')):.4f}; report: {result.paths['report']}",
                  highlight=False)


@app.command("predict")
def predict_cmd(
    videos: Annotated[list[Path], typer.Argument(help="video files (any container/codec FFmpeg reads) or folders: "
                                                      "every .mp4 .mkv .webm .mov .avi .m4v file directly inside.")],
    model: Annotated[str, typer.Option(help="a registry URI (models:/NAME@ALIAS or models:/NAME/VERSION) or a "
                                            "folder with stage1/alignment.pt and stage2/model.pt.")] = (
        "models:/emi-fusion@champion"),
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="also write the table here: .csv, or .json (a list of "
                                                     "records).")] = None,
    submission: Annotated[Optional[Path], typer.Option(help="also write an ABAW submission here (.csv): Filename "
                                                            "= the file stem, one row per predicted clip.")] = None,
) -> None:
    """Six intensities and the per-modality fusion weights for new videos (transcribe + extract + both stages).

    A video with no audio, no speech or no face still gets a prediction: that modality's weight is 0. An
    unreadable video is named and skipped (a row with status error); the others are still predicted."""
    from emi.predict import PredictError, predict_videos, submission_table, table_format, video_inputs, write_predictions
    from emi.utils import write_text

    with _fails_with(PredictError, code=2):  # before any work: a wrong name must not cost a model load
        if out is not None:
            table_format(out)
        if submission is not None and submission.suffix.lower() != ".csv":
            raise PredictError(f"--submission {submission}: an ABAW submission is a .csv file")
    params = _load(params_path, profile, overrides)
    with _fails_with(PredictError):
        paths = video_inputs(videos)
    from emi.tracking.registry import TrackingError

    with _fails_with(PredictError, TrackingError, *_stage_errors()):
        alignment, fusion, params = _resolve_model(model, params)
        table = predict_videos(paths, params, alignment, fusion)
        abaw = submission_table(table) if submission is not None else None
    failed = table[table["status"] != "ok"]
    typer.echo(table.drop(columns=["Filename", "transcript"]).to_string(
        index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    if out is not None:
        write_predictions(table, out)
    summary = f"predicted {len(table) - len(failed)} of {len(table)} video(s)"
    if len(failed):
        summary += f"; unreadable, skipped: {', '.join(failed['id'])}"
    if out is not None:
        summary += f"; table: {out}"
    if abaw is not None:
        rows, left_out = abaw
        write_text(submission, rows.to_csv(index=False, float_format="%.6f"))
        summary += f"; submission: {submission} ({len(rows)} clip(s)" + (
            f", {len(left_out)} unreadable left out)" if left_out else ")")
    console.print(summary, highlight=False, soft_wrap=True)


def _resolve_model(model: str, params: Params) -> tuple[Path, Path, Params]:
    """Model files and the params they were trained with (a registered model carries its own)."""
    if model.startswith("models:/") or model.startswith("runs:/"):
        from emi.tracking.registry import load_registered

        files = load_registered(params, model)
        trained = Params.model_validate_json(Path(files["params"]).read_text())
        return Path(files["alignment"]), Path(files["fusion"]), trained
    root = Path(model)
    # the layout under models/: a copied models folder works wherever it lies
    alignment = root / LAYOUT.alignment_model.relative_to(LAYOUT.models)
    fusion = root / LAYOUT.fusion_model.relative_to(LAYOUT.models)
    for path in (alignment, fusion):
        if not path.is_file():
            raise typer.BadParameter(f"{path} not found (--model takes models:/… or a folder like models/)")
    return alignment, fusion, params


@bench_app.command("extract")
def bench_extract_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    raw: RawOpt = LAYOUT.raw,
    clips: Annotated[int, typer.Option(help="how many clips to decode and encode.")] = 40,
    repeats: Annotated[int, typer.Option(help="timed (batched, one-at-a-time) pairs, alternated; medians are printed.")] = 5,
) -> None:
    """Batched visual extraction vs one frame per call, same model and frames: frames/s, ratio, peak RSS."""
    from emi.bench.extract import bench_extract

    params = _load(params_path, profile, overrides)
    result = bench_extract(params, raw, clips, repeats)
    typer.echo("\n".join(result.lines()))


@bench_app.command("stage2")
def bench_stage2_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: TrainedRootOpt = LAYOUT.root,
    epochs: Annotated[int, typer.Option(help="epochs per training.")] = 10,
    times: Annotated[int, typer.Option(help="the second data shape: every clip this many times longer.")] = 3,
) -> None:
    """Stage-II training throughput: the configured loop against the reference loop (random batches padded to the
    longest clip, clips read from disk per batch, validation every epoch) on the pipeline's aligned features and
    on the same clips TIMES longer: clip-epochs/s and the ratio, each loop's GFLOP per epoch and GFLOP/s as a share
    of this machine's matmul rate."""
    from emi.bench.stage2 import bench_lines, bench_stage2

    params = _load(params_path, profile, overrides)
    layout = Layout(root)
    runs, peak = bench_stage2(params.stage2, params.seed, layout.aligned_file, layout.augmented_file, layout.raw,
                              epochs, times, echo=typer.echo)
    typer.echo("\n".join(bench_lines(runs, peak)))


@bench_app.command("ablate")
def bench_ablate_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: TrainedRootOpt = LAYOUT.root,
) -> None:
    """The ablation grid's arithmetic: each cell's matmul, convolution and attention GFLOP per epoch and in all its
    trainings, and the seconds they need at least at the best fp32 matmul rate of this machine's ablation workers
    (a lower bound: elementwise work is not counted)."""
    from emi.bench.ablate import bench_ablate

    params = _load(params_path, profile, overrides)
    layout = Layout(root)
    typer.echo("\n".join(bench_ablate(params, layout.aligned_file, layout.augmented_file, layout.raw)))


def _clip_sizes(clips: str) -> list[int]:
    try:
        return sorted({int(x) for x in clips.split(",") if x.strip()})
    except ValueError:
        raise typer.BadParameter(f"--clips {clips!r}: comma-separated numbers of clips") from None


@bench_app.command("scale")
def bench_scale_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    clips: Annotated[str, typer.Option(help="dataset sizes to generate, comma-separated.")] = "100,300,1000",
    work: Annotated[Path, typer.Option(help="where each size's data, models and logs go (kept).")] = Path(
        "data/bench-scale"),
    dvc_yaml: Annotated[Path, typer.Option(help="the stage commands are taken from here.")] = Path("dvc.yaml"),
    target: Annotated[int, typer.Option(help="extrapolate the linear fits to this many clips.")] = 12_660,
    out: Annotated[Optional[Path], typer.Option(help="also write the runs as JSON here.")] = None,
    stages: Annotated[str, typer.Option(help="comma-separated dvc.yaml stages to run, in order (all: every stage "
                                             "of dvc.yaml).")] = "all",
) -> None:
    """Generated datasets of growing size through every stage, each stage its own process as DVC runs it: wall time
    and peak RSS per stage, growth between sizes and a linear extrapolation (`--profile tiny` for a quick run)."""
    from dataclasses import asdict

    from emi.bench.scale import bench_scale, scale_summary
    from emi.utils import write_json

    params = _load(params_path, profile, overrides)
    sizes = _clip_sizes(clips)
    chosen = None if stages == "all" else tuple(x.strip() for x in stages.split(",") if x.strip())
    try:
        runs = bench_scale(params, sizes, work, dvc_yaml, chosen, echo=typer.echo)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    typer.echo("\n".join(scale_summary(runs, target)))
    if out is not None:
        write_json(out, {"profile": params.profile, "runs": [asdict(r) for r in runs]})


@bench_app.command("project")
def bench_project_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    clips: Annotated[str, typer.Option(help="dataset sizes, comma-separated (two or more).")] = "48,96",
    work: Annotated[Path, typer.Option(help="where each size's data, models and logs go (kept).")] = Path(
        "data/bench-project"),
    dvc_yaml: Annotated[Path, typer.Option(help="the stage commands are taken from here.")] = Path("dvc.yaml"),
    out: Annotated[Path, typer.Option(help="the projection as JSON.")] = Path("benchmarks/results/project.json"),
    stages: Annotated[str, typer.Option(help="comma-separated dvc.yaml stages to run, in order (all: every stage "
                                             "of dvc.yaml).")] = "all",
    data: Annotated[Optional[Path], typer.Option(help="read each size's dataset from DATA/n<size> (made by "
                                                      "--prepare) instead of generating it here.")] = None,
    prepare: Annotated[Optional[Path], typer.Option(help="only generate each size's dataset into PREPARE/n<size> "
                                                         "(and the tokenizer --no-hub needs), for a machine that "
                                                         "cannot (no ffmpeg or espeak-ng); then stop.")] = None,
    no_hub: Annotated[bool, typer.Option("--no-hub", help="the hub is out of reach: its encoders random-initialised "
                                                          "at their shapes, the ASR the packaged one (the JSON "
                                                          "lists what was replaced).")] = False,
) -> None:
    """How long the pipeline takes on Hume-Vidmimic2 (8,072 / 4,588 / 4,586 clips): every stage on generated
    datasets of two or more sizes, each read as a local copy of the licensed layout, its time fitted per unit it
    grows with (clips, training clip-epochs, trainings) and read at the real split sizes; with the GPU's busy share
    and peak memory per stage where there is a GPU. Prints a table, writes JSON (`device`, `commit`, per-stage
    `projected_s`, `projected_total_s`)."""
    from emi.bench.project import bench_project, prepare_datasets, projection_markdown
    from emi.utils import write_json

    params = _load(params_path, profile, overrides)
    chosen = None if stages == "all" else tuple(x.strip() for x in stages.split(",") if x.strip())
    try:
        if prepare is not None:
            prepare_datasets(params, _clip_sizes(clips), prepare, echo=typer.echo)
            typer.echo(f"prepared {prepare}: run `emi bench project --data {prepare}` with the same --clips and "
                       "profile where the projection is measured")
            return
        result = bench_project(params, _clip_sizes(clips), work, dvc_yaml, chosen, data, no_hub, echo=typer.echo)
    except (ValueError, RuntimeError) as exc:  # EncoderError is a RuntimeError
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    write_json(out, result)
    typer.echo(f"\n{result['profile']} profile on {result['device']} ({result['machine']}), {result['commit']}")
    for key, what in result["replaced_without_hub"].items():
        typer.echo(f"without the hub: {key} = {what}")
    typer.echo("\n" + "\n".join(projection_markdown(result)) + f"\n\nwrote {out}")


@bench_app.command("curve")
def bench_curve_cmd(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    clips: Annotated[str, typer.Option(help="dataset sizes to generate, comma-separated.")] = "300,1000,3000",
    work: Annotated[Path, typer.Option(help="where each size's data, models and logs go (kept; a rerun resumes "
                                            "finished work).")] = Path("data/bench-curve"),
    out: Annotated[Path, typer.Option(help="the curve as JSON.")] = Path("benchmarks/results/curve.json"),
    plot: Annotated[Path, typer.Option(help="the curve as a plot (PNG).")] = Path("benchmarks/results/curve.png"),
    fresh: Annotated[bool, typer.Option("--fresh", help="replace --out instead of keeping its other sizes.")] = False,
) -> None:
    """A learning curve of the network against the ridge: the embedded generator at each size (persons in
    proportion), the stages up to Stage II, then the full model, each fusion, no temporal blocks and the linear
    probe over `evaluate.seeds` seeds; a markdown table, a plot and JSON (`--profile tiny` for a quick run).
    The sizes already in --out (same profile, seeds and recipe) that this run does not measure are kept."""
    import json

    from emi.bench.curve import bench_curve, curve_markdown, curve_plot
    from emi.utils import write_json, write_text

    params = _load(params_path, profile, overrides)
    sizes = _clip_sizes(clips)
    previous = None if fresh or not out.is_file() else json.loads(out.read_text(encoding="utf-8"))

    def write(curve: dict) -> str:  # after every size
        table = "\n".join(curve_markdown(curve)) + "\n"
        write_json(out, curve)
        machines = ", ".join(dict.fromkeys(s.get("machine") or curve["machine"] for s in curve["sizes"]))
        write_text(out.with_suffix(".md"), f"Learning curve on {machines} (each size's commit in its last row)"
                                           f"\n\n{table}")
        curve_plot(curve, plot)
        return table

    try:
        curve = bench_curve(params, sizes, work, echo=typer.echo, on_size=write, previous=previous)
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    typer.echo(write(curve) + f"\nwrote {out}, {out.with_suffix('.md')}, {plot}")


@registry_app.command("register")
def registry_register(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    root: Annotated[Path, typer.Option(help="the folder holding data/, models/ and reports/ (the pipeline layout).")] = (
        LAYOUT.root),
) -> None:
    """Register the model the pipeline made (models/stage1 + models/stage2, with reports/metrics.json) in MLflow
    and apply the promotion policy; the pipeline's last step. The same model files are registered once."""
    from emi.tracking.registry import TrackingError, register_outputs

    params = _load(params_path, profile, overrides)
    with _fails_with(TrackingError):
        decision = register_outputs(params, Layout(root))
    what = "registered" if decision["new"] else "already registered:"
    champion = f"v{decision['champion_version']}" if decision["champion_version"] else "none"
    console.print(f"{what} {decision['model']} v{decision['version']}; champion: {champion} "
                  f"({decision['reason']})", highlight=False)


@registry_app.command("compare")
def registry_compare(
    versions: Annotated[Optional[list[str]], typer.Argument(help="versions or aliases (default: the newest).")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Registered versions side by side: aliases, metrics, data fingerprint and the params that differ."""
    from emi.tracking.registry import TrackingError, compare_versions

    params = _load(params_path, profile, overrides)
    with _fails_with(TrackingError):
        typer.echo(compare_versions(params, versions or None))


@validate_app.command("raw")
def validate_raw_cmd(
    raw: Annotated[Path, typer.Argument(help="dataset folder in the Hume-Vidmimic2 layout.")] = LAYOUT.raw,
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    reports: Annotated[Path, typer.Option(help="folder for download.json/.md.")] = LAYOUT.validation,
) -> None:
    """Check a dataset folder (splits, labels, ids, readable videos) without fetching anything."""
    from emi.contracts.raw import validate_raw

    params = _load(params_path, profile, overrides)
    report = validate_raw(raw, params.data, reports)
    console.print(report.summary(), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


@models_app.command("fetch")
def models_fetch(
    to: Annotated[Path, typer.Option("--to", help="folder for the weights (DIR/<role>/<model>).")],
    write: Annotated[bool, typer.Option(help="write the paths into the params file.")] = True,
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
) -> None:
    """On a machine with the hub: download every hub model the configuration loads (transcribe.asr,
    extract.visual/audio/text without a path) into TO, in the layout their `path` keys read, and write the paths
    into params.yaml (with --profile: that profile's values plus the paths). Prints the keys and the command that
    sets them elsewhere: copy TO to the machine without the hub and run it there."""
    from emi.encoders.base import EncoderError
    from emi.encoders.fetch import fetch, params_use_command
    from emi.params_yaml import set_values, use

    params = _load(params_path, profile, overrides)
    with _fails_with(EncoderError):
        paths = fetch(params, to)
    if not paths:
        console.print(f"nothing to fetch: profile {params.profile!r} loads no encoder from the hub", highlight=False)
        return
    for key, path in paths.items():
        typer.echo(f"{key}: {path}")
    if write:
        found = [f"{k}={v}" for k, v in paths.items()]
        with _fails_with(ConfigError, code=2):  # with --profile: its values; else params.yaml's, kept
            use(profile, [*(overrides or []), *found], params_path) if profile else set_values(found, params_path)
        console.print(f"{params_path}: the paths written", highlight=False)
    typer.echo(params_use_command(params.profile, paths))


@params_app.command("show")
def params_show(
    params_path: ParamsOpt = Path("params.yaml"),
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    section: Annotated[Optional[str], typer.Argument(help="only this top-level section, e.g. download.")] = None,
) -> None:
    """Print the values a command would use (params.yaml, or --profile, plus --set overrides) as YAML."""
    data = _load(params_path, profile, overrides).model_dump(mode="json")
    if section is not None:
        if section not in data:
            console.print(f"[red]error:[/red] no section {section!r}; sections: {', '.join(data)}")
            raise typer.Exit(2)
        data = {section: data[section]}
    typer.echo(yaml.safe_dump(data, sort_keys=False))


@params_app.command("use")
def params_use(
    profile: Annotated[str, typer.Argument(help=f"the profile to write ({', '.join(available_profiles())}).")],
    overrides: SetOpt = None,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write PROFILE's values (with --set overrides) into params.yaml: every key the pipeline reads, each with its
    meaning as a comment. `emi params use paper --set download.local.path=/data/Hume-Vidmimic2` switches to the
    licensed data."""
    from emi.params_yaml import use

    with _fails_with(ConfigError, code=2):
        use(profile, overrides or [], params_path)
    console.print(f"{params_path}: the values of profile {profile!r}"
                  + (f" with {', '.join(overrides)}" if overrides else ""), highlight=False)


@params_app.command("set")
def params_set(
    overrides: Annotated[list[str], typer.Argument(help="key=value pairs, e.g. stage2.width=64.")],
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Change values of params.yaml in place (checked first; what `dvc exp run -S` does, without an experiment)."""
    from emi.params_yaml import set_values

    with _fails_with(ConfigError, code=2):
        set_values(overrides, params_path)
    console.print(f"{params_path}: {', '.join(overrides)}", highlight=False)


if __name__ == "__main__":
    app()
