"""Shared fixtures: the tiny profile and one generated tiny dataset per test session."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest

from emi.config import Params, load_params
from emi.data.dataset import read_latents
from emi.synth.generate import generate, plan_dataset, render_clip


# the longest modules (measured), started first: `make test` runs them on pytest-xdist workers one module per worker,
# and a long module started last would leave the other worker idle at the end
LONGEST_FIRST = ("pipeline/test_flow.py", "pipeline/test_work_pools.py",
                 "train/test_temporal.py", "pipeline/test_reliability.py", "stages/test_transcribe.py")


def pytest_collection_modifyitems(config, items):
    """Longest modules first, then the other modules with slow tests, then the rest (each in collection order)."""
    tests = Path(__file__).parent
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        rel = item.path.relative_to(tests).as_posix() if item.path.is_relative_to(tests) else ""
        return (0, LONGEST_FIRST.index(rel)) if rel in LONGEST_FIRST else (1 if item.path in slow else 2, 0)

    items.sort(key=rank)


T = TypeVar("T")


def once_per_session(tmp_path_factory, name: str, build: Callable[[Path], T]) -> T:
    """``build(folder)`` run once per test session, however many pytest-xdist workers ask for it: the first to ask
    builds in a folder all workers share (the session's temp root) under a file lock and pickles what ``build``
    returns; the others wait for the lock, then read that. Without xdist: once, in the session's temp folder.

    For the session fixtures that build real data and models (the tiny dataset, its features, Stage I, the tiny
    pipeline): with one module per worker, each worker that needed one used to build its own copy of the same bytes.
    The folder is read-only for the tests, like the fixtures' values."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = shared / name, shared / f"{name}.pickle"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker starts over
            folder.mkdir()
            value = build(folder)
            partial = done.with_suffix(".partial")
            partial.write_bytes(pickle.dumps(value))
            partial.replace(done)
        return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """Every stage logs to MLflow: during tests, to a real store in a temp folder, never the repo's."""
    import os

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("EMI_MLFLOW_PARENT_RUN_ID", None)
    return uri


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return load_params(None, profile="tiny")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_params) -> Path:
    """A generated dataset in the Hume-Vidmimic2 layout (read-only: copy it before changing it)."""
    def build(folder: Path) -> Path:
        generate(tiny_params.download.synthetic, tiny_params.seed, folder / "raw", show_progress=False)
        return folder / "raw"

    return once_per_session(tmp_path_factory, "tiny_dataset", build)


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    dst = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, dst)
    return dst


LOOPING_CLIP = "00102"


@pytest.fixture(scope="session")
def looping_clip(tmp_path_factory) -> tuple[Path, str]:
    """Clip 00102 of the embedded default, rendered alone (byte-identical to the dataset's) and its sentence: a laugh
    then "His face was comical.", which greedy tiny.en heard as "Ha, ha, ha, ..." until its window ended
    (compression ratio 26.24; with the guard "Ha, ha, ha. Ha, h, ha! His face was comical merit.")."""
    params = load_params(None, profile="embedded")
    plan = next(p for p in plan_dataset(params.download.synthetic, params.seed) if p.id == LOOPING_CLIP)
    path = tmp_path_factory.mktemp("loop") / f"{LOOPING_CLIP}.mp4"
    render_clip(plan, params.download.synthetic, path)
    return path, plan.sentence


EMI = str(Path(sys.executable).parent / "emi")
"""The console script installed next to the interpreter running the tests (PATH may not include the venv)."""


def tiny(*overrides: str) -> Params:
    """The tiny profile with ``key=value`` overrides."""
    return load_params(None, overrides=list(overrides), profile="tiny")


def transcripts_from_script(raw: Path, out: Path) -> Path:
    """What `emi transcribe` writes, taken from the generator's script (keeps tests that are not about ASR fast)."""
    lat = read_latents(raw)
    status = ["ok" if text else "empty" for text in lat["sentence"]]  # a clip may have nothing said in it
    pd.DataFrame({"id": lat["id"], "text": lat["sentence"], "status": status}).to_csv(out, index=False)
    return out


@pytest.fixture(scope="session")
def tiny_features(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny dataset's feature store (transcripts from the generator's script). Read-only."""
    from emi.stages.extract import extract

    def build(root: Path) -> Path:
        tr = transcripts_from_script(tiny_dataset, root / "tr.csv")
        extract(tiny(), tiny_dataset, tr, root / "features", None, show_progress=False)
        return root / "features"

    return once_per_session(tmp_path_factory, "tiny_features", build)


@pytest.fixture(scope="session")
def tiny_aligned(tiny_features, tiny_dataset, tmp_path_factory):
    """Stage I trained on ``tiny_features`` (its Stage1Result: model_path, aligned_path, metrics). Read-only."""
    from emi.stages.stage1 import stage1

    def build(root: Path):
        result = stage1(tiny(), tiny_features, root / "model", root / "aligned", tiny_dataset, show_progress=False)
        assert result.model_path.is_file()
        return result

    return once_per_session(tmp_path_factory, "tiny_aligned", build)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_dataset, tmp_path_factory):
    """The tiny pipeline run for real once per session (whisper ASR included), laid out under one root as
    ``emi.paths.Layout`` expects: data/raw (a copy of the tiny dataset), data/transcripts, data/features,
    data/aligned, models/stage1, data/augmented, models/stage2, models/ablation and reports (ablation.md: V+A+T
    quality and average; validation/), then evaluated; ``registered`` is the registry's decision for it
    (``emi-fusion-test``) in an MLflow store of its own, ``params.tracking.uri``: a test that reads or writes
    that registry points MLFLOW_TRACKING_URI there (``pipeline_store``). Read-only: copy or link it before changing
    it."""

    def build(root: Path):
        from types import SimpleNamespace

        from emi.paths import Layout
        from emi.tracking.registry import register_outputs

        layout = Layout(root / "pipeline")
        params = load_params(None, profile="tiny", overrides=[f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
                                                              "tracking.registered_model=emi-fusion-test"])
        with pipeline_store(params):
            shutil.copytree(tiny_dataset, layout.raw)
            result = run_tiny_stages(params, layout).evaluate
            registered = register_outputs(params, layout)
        return SimpleNamespace(params=params, layout=layout, root=layout.root, raw=layout.raw, reports=layout.reports,
                               result=result, registered=registered)

    return once_per_session(tmp_path_factory, "tiny_pipeline", build)


def run_tiny_stages(params: Params, layout):
    """The stages after download, in the pipeline's order, on ``layout.raw`` (the ablation narrowed to V+A+T quality
    and average); their results. `tiny_pipeline` runs them, and so does a test that must train the same models."""
    from types import SimpleNamespace

    from emi.stages.ablate import ablation
    from emi.stages.augment import augment
    from emi.stages.evaluate import evaluate
    from emi.stages.extract import extract
    from emi.stages.stage1 import stage1
    from emi.stages.stage2 import stage2
    from emi.stages.transcribe import transcribe

    tr = transcribe(params, layout.raw, layout.transcripts, layout.validation, show_progress=False)
    ex = extract(params, layout.raw, tr.table, layout.features, layout.validation, show_progress=False)
    stage1(params, layout.features, layout.stage1, layout.aligned, layout.raw, show_progress=False)
    augment(params, layout.raw, layout.features, layout.alignment_model, layout.augmented, show_progress=False)
    s2 = stage2(params, layout.aligned_file, layout.raw, layout.stage2, layout.augmented_file, show_progress=False)
    ablation(params, layout.aligned_file, layout.raw, layout.reports, modality_sets=("VAT",),
             fusions=("quality", "average"), inputs=(params.stage2.inputs,), stage2_model=layout.fusion_model,
             models_dir=layout.ablation_models, augmented=layout.augmented_file)
    ev = evaluate(params, layout, show_progress=False)
    return SimpleNamespace(transcribe=tr, extract=ex, stage2=s2, evaluate=ev)


@contextmanager
def pipeline_store(params: Params) -> Iterator[None]:
    """A context in which MLflow (MLFLOW_TRACKING_URI, which wins over params.yaml) is ``params``' store: the tiny
    pipeline's, whichever worker built it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", params.tracking.uri)
        yield


def link_layout(src, dst_root: Path, *parts: str):
    """A new Layout at ``dst_root`` whose named parts (Layout property names, e.g. "raw", "stage1") are symlinks
    to ``src``'s: later stages can write their own outputs next to a finished pipeline's inputs."""
    from emi.paths import Layout

    dst = Layout(dst_root)
    for part in parts:
        target = getattr(dst, part)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(getattr(src, part).resolve(), target_is_directory=getattr(src, part).is_dir())
    return dst


def remux_with_nominal_rate(src: Path, dst: Path, rate: int = 1000) -> Path:
    """``src``'s packets, untouched, in a Matroska container (named as ``dst``) whose video stream declares a
    nominal rate of ``rate`` fps, as some real clips do; the frames' timestamps are the original ones."""
    from fractions import Fraction

    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="matroska") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        vout.codec_context.framerate = Fraction(rate)  # the muxer writes it as the track's default frame duration
        vout.time_base = Fraction(1, 1000)
        streams = {vin.index: vout, **{a.index: out.add_stream_from_template(a) for a in inp.streams.audio}}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def concat_clip(src: Path, dst: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row (stream copy with FFmpeg's concat demuxer): a longer real clip."""
    import subprocess

    listing = dst.with_suffix(".txt")
    listing.write_text("".join(f"file '{Path(src).resolve()}'\n" for _ in range(times)))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-c", "copy", str(dst)], check=True)
    listing.unlink()
    return dst


REPO = Path(__file__).resolve().parents[1]


def clone_working_tree(dst: Path, src: Path = REPO) -> Path:
    """A git repository at ``dst`` holding this working tree's tracked and untracked-but-not-ignored files in one
    commit (what a fresh clone of it would hold, uncommitted edits included), its ``.venv`` linked to ours."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    git = ["git", "-c", "user.name=emi-test", "-c", "user.email=emi-test@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "working tree"]):
        subprocess.run(git + cmd, cwd=dst, check=True, capture_output=True)
    (dst / ".venv").symlink_to(src / ".venv")  # after the commit: git would track a link named .venv
    return dst
