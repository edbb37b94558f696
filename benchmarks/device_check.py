"""CUDA paths of the paper profile on a GPU machine: encoders in fp16/bf16 and Stage II training on the device.

    python benchmarks/device_check.py            # prints one line per check; exits 1 if a check fails

Encoders are random-initialised here (no hub on the check machine): throughput and numerics do not depend on
the weights' values. Nothing here runs in CI (no GPU there); tests never depend on it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emi.config import EncoderSpec, load_params  # noqa: E402
from emi.encoders import load_audio, load_visual, resolve_device, resolve_dtype  # noqa: E402
from emi.stage2 import load_model, predict, save_model, train_model  # noqa: E402
from emi.train import SequenceData  # noqa: E402

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


def synthetic(n: int, dims: dict[str, int], seed: int) -> SequenceData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(15, 26, n)
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


def main() -> int:
    device = resolve_device("auto")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""), flush=True)
    if device.type != "cuda":
        print("no CUDA device: nothing to check")
        return 0
    visual(device)
    audio(device)
    stage2_on_device(device)
    print("all device checks passed" if not FAILED else f"FAILED: {', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
