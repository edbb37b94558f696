"""`emi bench project`: how long the pipeline takes on Hume-Vidmimic2, from runs anyone can make. Every stage of
dvc.yaml runs as its own process (``emi.bench.scale``) on generated datasets of two or more sizes, each read by the
download stage as a user's local copy of the licensed layout (what a Hume-Vidmimic2 user's download does: link or
copy, then validate). Each stage's time is fitted as ``fixed + per_unit * units``, where the unit is what the stage
grows with (clips for download, transcribe and extract; training clip-epochs for Stage I and for each Stage-II
training, times the ablation's trainings; validation clips for evaluate), and the fit is read at the units
Hume-Vidmimic2's split sizes give under the same profile. Beside the time: the GPU's busy share and peak memory per
stage (sampled with ``nvidia-smi`` when there is one) and the disk the run's folders take.

A GPU machine may be unable to generate the datasets (no ffmpeg or espeak-ng) or to reach the hub: the datasets can
be made elsewhere (``prepare_datasets``) and the hub's encoders replaced by what runs without it at the same shapes
(``without_hub``); the projection's JSON says what was replaced."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from emi.bench.scale import StageRun, run_stages, sized_params, stage_commands
from emi.config import Params
from emi.evaluation.ablation import ablation_grid
from emi.metrics import MIN_CLIPS

HUME_SPLITS = {"train": 8072, "valid": 4588, "test": 4586}
"""Hume-Vidmimic2's split sizes (17,246 clips)."""

UNITS = {"download": "clips", "transcribe": "clips", "extract": "clips", "stage1": "training clip-epochs",
         "augment": "training clips", "stage2": "training clip-epochs",
         "ablate": "training clip-epochs x trainings", "evaluate": "validation clips"}
"""What each stage's time grows with."""


def training_units(p: Params, train_clips: int) -> float:
    """Clip-epochs of one Stage-II training: training clips x epochs, or for a length in optimizer steps the clips
    those steps draw (steps x batch size, whatever the data size)."""
    s = p.stage2.schedule
    return float(s.steps * p.stage2.batch_size if s.steps is not None else train_clips * s.epochs)


def trainings(p: Params) -> int:
    """Stage-II trainings of the ablation: every cell of the grid, ``evaluate.seeds`` times."""
    return len(ablation_grid(p.stage2)) * p.evaluate.seeds


def units(stage: str, p: Params, splits: dict[str, int]) -> float:
    clips = sum(splits.values())
    train, valid = splits.get("train", 0), splits.get("valid", 0)
    return {"download": clips, "transcribe": clips, "extract": clips,
            "stage1": train * p.stage1.schedule.epochs, "augment": train,
            "stage2": training_units(p, train), "ablate": training_units(p, train) * trainings(p),
            "evaluate": valid}.get(stage, clips)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``fixed, per_unit`` of a least-squares line (per_unit 0 where the units do not change between sizes; per
    unit never below 0: a stage does not get faster with more work, whatever the noise of two points)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs)) < 2:
        return float(y.mean()), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    if slope < 0:
        return float(y.mean()), 0.0
    return float(intercept), float(slope)


def projection(runs: list[StageRun], p: Params, splits: dict[int, dict[str, int]],
               target: dict[str, int] = HUME_SPLITS) -> dict:
    """Per stage: its unit, the fit, the units and projected seconds at ``target``, the GPU's busy share and peak
    memory (the largest size's), the disk the run's folders took after it; and ``projected_total_s``."""
    sizes = sorted({r.clips for r in runs})
    by = {(r.stage, r.clips): r for r in runs}
    stages = list(dict.fromkeys(r.stage for r in runs))
    out = {}
    for stage in stages:
        xs = [units(stage, p, splits[n]) for n in sizes]
        fixed, per_unit = fit(xs, [by[(stage, n)].seconds for n in sizes])
        at = units(stage, p, target)
        last = by[(stage, sizes[-1])]
        out[stage] = {"unit": UNITS.get(stage, "clips"), "units": dict(zip(map(str, sizes), xs)),
                      "seconds": {str(n): round(by[(stage, n)].seconds, 2) for n in sizes},
                      "fixed_s": round(fixed, 2), "per_unit_s": per_unit, "target_units": at,
                      "projected_s": round(fixed + per_unit * at, 1), "gpu_busy": last.gpu_busy,
                      "peak_gpu_mb": last.peak_gpu_mb, "disk_mb": last.disk_mb, "peak_rss_mb": round(last.peak_rss_mb)}
    clips = [sum(splits[n].values()) for n in sizes]
    disk = [by[(stages[-1], n)].disk_mb for n in sizes] if stages else []
    d_fixed, d_per = fit(clips, disk) if disk and None not in disk else (math.nan, math.nan)
    return {"stages": out, "projected_total_s": round(sum(s["projected_s"] for s in out.values()), 1),
            "target_splits": dict(target), "projected_disk_gb": (None if math.isnan(d_per) else
                                                                 round((d_fixed + d_per * sum(target.values())) / 1024,
                                                                       1))}


def projection_markdown(proj: dict) -> list[str]:
    lines = ["| stage | unit | seconds per size | fixed s | s per unit | projected | GPU busy | peak GPU MB |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, s in proj["stages"].items():
        busy = "-" if s["gpu_busy"] is None else f"{100 * s['gpu_busy']:.0f} %"
        gpu_mb = "-" if s["peak_gpu_mb"] is None else f"{s['peak_gpu_mb']:,.0f}"
        lines.append(f"| {stage} | {s['unit']} | {' / '.join(f'{v:.1f}' for v in s['seconds'].values())} | "
                     f"{s['fixed_s']:.1f} | {s['per_unit_s']:.3g} | {s['projected_s'] / 60:,.1f} min | {busy} | "
                     f"{gpu_mb} |")
    total = proj["projected_total_s"]
    lines.append(f"| **total** | | | | | **{total / 60:,.1f} min ({total / 3600:.2f} h)** | | |")
    return lines


TOKENIZER_DIR = "bert-tokenizer"
"""Where ``prepare_datasets`` puts the WordPiece tokenizer a ``without_hub`` BERT is built with."""


def dataset_dir(folder: Path, n: int) -> Path:
    return Path(folder) / f"n{n}"


def prepare_datasets(params: Params, sizes: list[int], folder: Path, echo=print) -> dict[int, Path]:
    """Each size's dataset at ``folder/n<size>``, in Hume-Vidmimic2's layout as the profile's generator makes it
    (resumed where it is there already), and the packaged BERT tokenizer at ``folder/bert-tokenizer`` (what
    ``without_hub`` builds its BERT with). On any machine with ffmpeg and espeak-ng; the projection then reads it
    (``bench_project(data=folder)``) where they are missing."""
    from emi.synth.generate import generate

    folders = {}
    for n in sorted(set(sizes)):
        synthetic = sized_params(params, n, params.tracking.uri).download.synthetic
        generate(synthetic, params.seed, dataset_dir(folder, n), params.download.workers, show_progress=False)
        folders[n] = dataset_dir(folder, n)
        echo(f"{n:>6} clips  generated in {folders[n]}")
    copy_tokenizer(Path(folder) / TOKENIZER_DIR)
    return folders


def packaged_tokenizer() -> Path:
    """The embedded default's packaged text encoder (MiniLM), whose tokenizer is BERT's uncased WordPiece."""
    from emi.config import load_params
    from emi.encoders.base import packaged_path

    text = load_params(None, profile="embedded").extract.text
    return packaged_path(text.kind, text.name)


def copy_tokenizer(dst: Path) -> Path:
    """The packaged BERT tokenizer's files (``packaged_tokenizer``) into ``dst``: all ``without_hub`` needs of the
    package on a machine that lacks it."""
    import shutil

    from emi.encoders.text import BERT_TOKENIZER

    src = packaged_tokenizer()
    Path(dst).mkdir(parents=True, exist_ok=True)
    for name in BERT_TOKENIZER:
        shutil.copy(src / name, Path(dst) / name)
    return Path(dst)


def without_hub(params: Params, folder: Path, tokenizer: Path | None = None) -> tuple[Params, dict[str, str]]:
    """``params`` with every model that would come from the hub replaced by one that runs without it: open_clip
    and Wav2Vec2 encoders random-initialised at the named checkpoint's shape, a BERT of the named shape with random
    weights saved under ``folder`` (``tokenizer``: its WordPiece files, the packaged MiniLM's when None), and the
    ASR by the embedded default's packaged model (a smaller whisper decoding the same speech: transcribe's
    projection is then a lower bound). Returns the params and, per key replaced, what replaced it."""
    from emi.config import load_params
    from emi.encoders.base import RANDOM, resolve
    from emi.encoders.text import save_random_bert

    embedded = load_params(None, profile="embedded")
    replaced: dict[str, str] = {}
    extract = {}
    for role in ("visual", "audio", "text"):
        spec = getattr(params.extract, role)
        key = f"extract.{role}"
        if resolve(spec, key).source != "hub":
            continue
        if spec.kind in ("open_clip", "wav2vec2"):
            extract[role] = spec.model_copy(update={"pretrained": RANDOM, "allow_random_init": True})
            replaced[key] = f"{spec.name}: its shape, random weights"
        elif spec.kind == "bert":
            tokenizer = tokenizer or packaged_tokenizer()
            out = save_random_bert(spec.name, tokenizer, Path(folder) / spec.name.replace("/", "--"), params.seed)
            extract[role] = spec.model_copy(update={"path": out})
            replaced[key] = f"{spec.name}: its shape, random weights, the uncased WordPiece tokenizer of {tokenizer}"
        else:
            raise ValueError(f"{key}: {spec.kind} {spec.name!r} comes from the hub and has no stand-in without it; "
                             f"set {key}.path to a local copy")
    asr = params.transcribe.asr
    update = {"extract": params.extract.model_copy(update=extract)}
    if resolve(asr, "transcribe.asr").source == "hub":
        update["transcribe"] = params.transcribe.model_copy(update={"asr": embedded.transcribe.asr})
        replaced["transcribe.asr"] = (f"{asr.name} -> {embedded.transcribe.asr.name} (packaged): a smaller whisper "
                                      "decoding the same speech, so transcribe's projection is a lower bound")
    return params.model_copy(update=update), replaced


def local_copy(params: Params, dataset: Path, store: str) -> Params:
    """``params`` whose download reads ``dataset`` as a local copy (the profile's link mode) and tracking into
    ``store``."""
    local = params.download.local.model_copy(update={"path": Path(dataset).resolve()})
    return params.model_copy(update={
        "download": params.download.model_copy(update={"source": "local", "local": local}),
        "tracking": params.tracking.model_copy(update={"uri": store})})


def bench_project(params: Params, sizes: list[int], work: Path, dvc_yaml: Path,
                  stages: tuple[str, ...] | None = None, data: Path | None = None, no_hub: bool = False,
                  echo=print) -> dict:
    """Run the stages at each size and project them to Hume-Vidmimic2. ``data``: the datasets ``prepare_datasets``
    made (else they are generated under ``work/datasets``); ``no_hub``: the hub's models replaced (``without_hub``)."""
    from emi.bench.curve import commit, machine, split_sizes
    from emi.bench.scale import device_name

    sizes = sorted(set(sizes))
    if len(sizes) < 2:
        raise ValueError("a projection needs two sizes or more (--clips 24,48)")
    work = Path(work)
    commands = stage_commands(dvc_yaml, stages)  # a stage name dvc.yaml lacks fails before anything runs
    if data is None:
        data = work / "datasets"
        prepare_datasets(params, sizes, data, echo)
    missing = [str(dataset_dir(data, n)) for n in sizes if not dataset_dir(data, n).is_dir()]
    if missing:
        raise ValueError(f"no dataset at {', '.join(missing)}: make them with `emi bench project --prepare {data} "
                         f"--clips {','.join(map(str, sizes))}` (same profile)")
    splits = {n: split_sizes(dataset_dir(data, n)) for n in sizes}
    few = [f"{n} clips: {s.get('valid', 0)}" for n, s in splits.items() if s.get("valid", 0) < MIN_CLIPS]
    if "evaluate" in commands and few:  # found before the stages run, not when evaluate stops
        raise ValueError(f"validation clips per size ({'; '.join(few)}): evaluate needs {MIN_CLIPS} or more; "
                         "choose larger --clips")
    replaced: dict[str, str] = {}
    if no_hub:
        tokenizer = Path(data) / TOKENIZER_DIR
        params, replaced = without_hub(params, work / "no-hub", tokenizer if tokenizer.is_dir() else None)
    runs: list[StageRun] = []
    for n in sizes:
        root = work / f"n{n}"
        store = f"sqlite:///{(root / 'mlflow.db').resolve()}"
        runs += run_stages(local_copy(params, dataset_dir(data, n), store), n, root, commands, echo)
    return {"commit": commit(), "machine": machine(), "device": device_name(), "profile": params.profile,
            "sizes": {str(n): s for n, s in splits.items()}, "data": str(Path(data).resolve()),
            "replaced_without_hub": replaced, **projection(runs, params, splits), "runs": [r.__dict__ for r in runs]}
