"""``emi extract``: 5 fps visual features, audio features pooled onto the same grid, one text vector per clip.

Storage (few files, resumable): ``<out>/{visual,audio,text}/shard-NNNNN.npz`` (arrays only, loaded with
``allow_pickle=False``), each followed by a ``.json`` receipt holding the fingerprint of exactly what the shard
depends on; ``index.csv`` (id -> shard, offset, steps, per-modality status) and ``manifest.json``. A shard is
complete only when its receipt matches, so a killed run redoes only unfinished shards, and changing e.g. the text
encoder recomputes text shards alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.audio import MediaError, decode_audio, rms_dbfs
from emi.config import ExtractParams, Params
from emi.transcribe import Clip
from emi.transcribe import list_clips as transcribe_clips
from emi.encoders import (AUDIO_SAMPLE_RATE, AudioEncoder, Resolved, VisualEncoder, feature_revision, load_audio,
                          load_block_state, load_text, load_visual, resolve, resolve_device, resolve_dtype)
from emi.utils import atomic_path, fingerprint, sha256_file, write_json, write_text, tracked

log = logging.getLogger(__name__)

MODALITIES = ("visual", "audio", "text")


class ExtractError(RuntimeError):
    """Too many clips could not be processed (the message names them)."""


@dataclass
class Decoded:
    """One clip on the 5 fps grid: frames at step centres, 16 kHz audio cut/padded to the grid's length."""

    clip: Clip
    n_steps: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    wave: np.ndarray | None = None
    visual_status: str = "ok"
    audio_status: str = "ok"
    detail: str = ""


@dataclass
class ExtractResult:
    out_dir: Path
    n_clips: int
    shards_done_now: dict[str, int]
    seconds: float
    frames_per_s: float
    clips_per_s: float
    encoders: list[Resolved]
    report: object | None = None

    def tracking(self) -> dict:
        return {"metrics": {"clips": self.n_clips, "seconds": self.seconds, "clips_per_s": self.clips_per_s,
                            "frames_per_s": self.frames_per_s},
                "artifacts": [self.report.json_path, self.report.md_path, self.out_dir / "manifest.json",
                              self.out_dir / "index.csv"]}


# ----------------------------------------------------------------------------- inputs
def list_clips(raw_dir: Path) -> list[Clip]:
    """Every id listed in the split files, in split order then id order (the transcribe stage's order)."""
    return transcribe_clips(Path(raw_dir))[0]


def grid_steps(duration_s: float, fps: float) -> int:
    """Steps of the 1/fps grid that fit in the clip: a 4.0 s clip at 5 fps has 20."""
    return int(math.floor(duration_s * fps + 1e-6))


def video_duration(container: av.container.InputContainer) -> float:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    if container.duration is not None:
        return container.duration / av.time_base
    raise MediaError("video stream has no duration")


def _scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def decode_clip(clip: Clip, cfg: ExtractParams, want_frames: bool, want_audio: bool,
                max_duration_s: float | None = None) -> Decoded:
    """Frames nearest to each step centre (k + 0.5) / fps, downscaled; audio padded with silence to the grid.
    A clip longer than ``max_duration_s`` is refused (its frames would not fit in memory at scale)."""
    out = Decoded(clip)
    try:
        with av.open(str(clip.path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            duration = video_duration(container)
            if max_duration_s is not None and duration > max_duration_s:
                raise MediaError(f"{duration:.1f} s is longer than download.validation.max_duration_s "
                                 f"= {max_duration_s:g} s")
            out.n_steps = grid_steps(duration, cfg.fps)
            if out.n_steps == 0:
                raise MediaError(f"shorter than one {1 / cfg.fps:.2f} s step at {cfg.fps:g} fps")
            if want_frames:
                out.frames = _sample_frames(container, out.n_steps, cfg)
        if want_audio:
            wave = decode_audio(clip.path, AUDIO_SAMPLE_RATE)
            if wave is None:
                out.audio_status = "no_audio"
            else:
                if rms_dbfs(wave) < cfg.silence_dbfs:
                    out.audio_status = "silent"
                n = int(round(out.n_steps / cfg.fps * AUDIO_SAMPLE_RATE))
                out.wave = np.pad(wave[:n], (0, max(0, n - wave.size)))  # audio that ends early is silence
    except (MediaError, av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        out.visual_status = out.audio_status = "error"
        out.detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MediaError) else str(exc)
        out.frames, out.wave, out.n_steps = [], None, 0
    return out


def _sample_frames(container, n_steps: int, cfg: ExtractParams) -> list[np.ndarray]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    centres = (np.arange(n_steps) + 0.5) / cfg.fps
    picked: list[np.ndarray] = []
    previous = None
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        while len(picked) < n_steps and frame.time >= centres[len(picked)]:
            k = len(picked)
            use = frame
            if previous is not None and abs(previous.time - centres[k]) < abs(frame.time - centres[k]):
                use = previous
            picked.append(_to_rgb(use, cfg.frame_max_side))
        if len(picked) == n_steps:
            break
        previous = frame
    if previous is not None:
        while len(picked) < n_steps:  # the last frames' timestamps end before the last centre
            picked.append(_to_rgb(previous, cfg.frame_max_side))
    if not picked:
        raise MediaError("video stream has no decodable frame")
    return picked


def _to_rgb(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    width, height = _scaled_size(frame.width, frame.height, max_side)
    if (width, height) == (frame.width, frame.height):
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")


# ----------------------------------------------------------------------------- face crop
class FaceCropper:
    """Largest face per frame from OpenCV's pretrained Haar cascade, grown by a margin; no face -> whole frame."""

    def __init__(self, margin: float):
        import cv2

        self.cv2 = cv2
        self.detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        self.margin = margin

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        grey = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY)
        faces = self.detector.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)
        if len(faces) == 0:
            return frame, False
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        side = int(max(w, h) * (1 + 2 * self.margin))
        cx, cy = x + w // 2, y + h // 2
        x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
        return frame[y0:y0 + side, x0:x0 + side], True


# ----------------------------------------------------------------------------- encoding
def encode_frames(encoder: VisualEncoder, decoded: list[Decoded], batch_size: int) -> list[np.ndarray]:
    """Batches frames across clips (same-size frames only, as real datasets mix resolutions)."""
    out: list[list[np.ndarray]] = [[] for _ in decoded]
    batch: list[np.ndarray] = []
    owners: list[int] = []

    def flush():
        if batch:
            feats = encoder.encode(np.stack(batch))
            for owner, row in zip(owners, feats):
                out[owner].append(row)
            batch.clear()
            owners.clear()

    for i, d in enumerate(decoded):
        for frame in d.frames:
            if batch and (len(batch) == batch_size or frame.shape != batch[0].shape):
                flush()
            batch.append(frame)
            owners.append(i)
    flush()
    return [np.stack(rows).astype(np.float32) if rows else np.zeros((0, encoder.dim), np.float32) for rows in out]


def encode_audio(encoder: AudioEncoder, waves: list[np.ndarray | None], n_steps: list[int], fps: float,
                 window_s: float | None, batch_size: int) -> list[np.ndarray]:
    """Hidden states of fixed-length windows (so a clip's features do not depend on its batch-mates),
    then the mean of the states inside each 1/fps step: the paper's windows aligned with video frames."""
    max_window = getattr(encoder, "max_samples", None)
    windows, owners, valid = [], [], []
    for i, wave in enumerate(waves):
        if wave is None:
            continue
        win = int(round((window_s or wave.size / AUDIO_SAMPLE_RATE) * AUDIO_SAMPLE_RATE))
        if max_window:
            win = min(win, max_window)
        for start in range(0, wave.size, win):
            piece = wave[start:start + win]
            windows.append(np.pad(piece, (0, win - piece.size)).astype(np.float32))
            owners.append(i)
            valid.append(piece.size)
    states: list[list[np.ndarray]] = [[] for _ in waves]
    order = sorted(range(len(windows)), key=lambda j: windows[j].size)  # equal lengths batch together
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        by_len: dict[int, list[int]] = {}
        for j in group:
            by_len.setdefault(windows[j].size, []).append(j)
        for js in by_len.values():
            hidden = encoder.encode(np.stack([windows[j] for j in js]))
            for j, h in zip(js, hidden):
                n = min(h.shape[0], math.ceil(valid[j] / AUDIO_SAMPLE_RATE * encoder.frame_rate))
                states[owners[j]].append((j, h[:n]))
    pooled = []
    for i, wave in enumerate(waves):
        if wave is None:
            pooled.append(np.zeros((n_steps[i], encoder.dim), np.float32))
            continue
        seq = np.concatenate([h for _, h in sorted(states[i], key=lambda x: x[0])])
        pooled.append(pool_to_grid(seq, encoder.frame_rate, fps, n_steps[i]))
    return pooled


def pool_to_grid(states: np.ndarray, rate: float, fps: float, n_steps: int) -> np.ndarray:
    """Mean of the hidden states whose time falls in [k/fps, (k+1)/fps) for each step k."""
    edges = np.floor(np.arange(n_steps + 1) * rate / fps).astype(int)
    out = np.empty((n_steps, states.shape[1]), np.float32)
    for k in range(n_steps):
        lo = min(edges[k], states.shape[0] - 1)
        hi = max(min(edges[k + 1], states.shape[0]), lo + 1)
        out[k] = states[lo:hi].mean(0)
    return out


# ----------------------------------------------------------------------------- shards
def _save_shard(path: Path, key: str, arrays: dict[str, np.ndarray], info: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json(path.with_suffix(".json"), {"fingerprint": key, **info})  # the receipt: written last


def shard_done(path: Path, key: str) -> bool:
    receipt = path.with_suffix(".json")
    if not (path.is_file() and receipt.is_file()):
        return False
    try:
        return json.loads(receipt.read_text())["fingerprint"] == key
    except (ValueError, KeyError):
        return False


def features_fingerprint(out_dir: Path) -> str:
    """What the feature store holds, from its shard receipts (which fingerprint every input of every shard)."""
    receipts = sorted(Path(out_dir).glob("*/shard-*.json"))
    return fingerprint([(p.parent.name, p.name, json.loads(p.read_text())["fingerprint"]) for p in receipts])


def load_shard(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _spec(cfg: ExtractParams, modality: str) -> dict:
    return getattr(cfg, modality).model_dump(mode="json")


def _encoder_key(cfg: ExtractParams, modality: str) -> dict:
    """What a shard's features depend on from the encoder: its spec and the code revision of its kind."""
    spec = getattr(cfg, modality)
    return {"spec": _spec(cfg, modality), "revision": feature_revision(modality, spec.kind)}


# ----------------------------------------------------------------------------- the stage
@dataclass
class ExtractPlan:
    """What this run must compute: shards, their fingerprints and which modality of which shard is missing."""

    params: Params
    raw_dir: Path
    out_dir: Path
    clips: list[Clip]
    shards: list[list[Clip]]
    keys: list[dict[str, str]]
    paths: dict[str, list[Path]]
    todo: dict[str, list[int]]
    texts: dict[str, str | None]

    @property
    def shards_to_run(self) -> list[int]:
        return sorted({i for ids in self.todo.values() for i in ids})


def plan_extract(params: Params, raw_dir: Path, transcripts: Path, out_dir: Path) -> ExtractPlan:
    cfg = params.extract
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clips = list_clips(raw_dir)
    texts = _read_transcripts(transcripts)
    shards = [clips[i:i + cfg.shard_size] for i in range(0, len(clips), cfg.shard_size)]
    hashes = {c.id: (sha256_file(c.path) if c.path.is_file() else "missing") for c in clips}
    common = {"fps": cfg.fps, "frame_max_side": cfg.frame_max_side,
              "max_duration_s": params.download.validation.max_duration_s}
    keys = []
    for shard in shards:
        ids = [(c.id, hashes[c.id]) for c in shard]
        keys.append({
            "visual": fingerprint({**_encoder_key(cfg, "visual"), "face_crop": cfg.face_crop,
                                   "face_margin": cfg.face_margin if cfg.face_crop else None, **common, "clips": ids}),
            "audio": fingerprint({**_encoder_key(cfg, "audio"), "silence_dbfs": cfg.silence_dbfs, **common,
                                  "clips": ids}),
            "text": fingerprint({**_encoder_key(cfg, "text"), "per_clip": True, "threads": 1,
                                 "clips": [(c.id, texts.get(c.id)) for c in shard]}),
        })
    paths = {m: [out_dir / m / f"shard-{i:05d}.npz" for i in range(len(shards))] for m in MODALITIES}
    todo = {m: [i for i in range(len(shards)) if not shard_done(paths[m][i], keys[i][m])] for m in MODALITIES}
    for m in MODALITIES:  # half-written files of a killed run, and shards of a previous, larger dataset
        for leftover in (out_dir / m).glob(".shard-*.tmp*"):
            leftover.unlink()
        for stale in (out_dir / m).glob("shard-*"):
            if stale.suffix in (".npz", ".json") and stale.with_suffix(".npz") not in paths[m]:
                stale.unlink()
    return ExtractPlan(params, raw_dir, out_dir, clips, shards, keys, paths, todo, texts)


_ENCODERS: dict[str, dict] = {}


def cached_encoders(cfg: ExtractParams) -> dict:
    """Encoders loaded once per process (a Dask worker runs many shards)."""
    key = cfg.model_dump_json()
    if key not in _ENCODERS:
        device = resolve_device(cfg.device)
        _ENCODERS.clear()
        _ENCODERS[key] = load_encoders(cfg, device, resolve_dtype(cfg.dtype, device), set(MODALITIES))
    return _ENCODERS[key]


def run_shard(plan: ExtractPlan, i: int, encoders: dict | None = None) -> int:
    """Compute the missing modalities of shard ``i``; returns the number of frames encoded. Safe to run in
    any process: the only output is the shard's own files, each written atomically, receipt last."""
    cfg = plan.params.extract
    encoders = encoders or cached_encoders(cfg)
    want_v, want_a, want_t = (i in plan.todo[m] for m in MODALITIES)
    n_frames = 0
    if want_v or want_a:
        decoded = _decode_all(plan.shards[i], cfg, want_v, want_a, plan.params.download.validation.max_duration_s)
        if want_v:
            cropper = FaceCropper(cfg.face_margin) if cfg.face_crop else None
            faces = [_crop_faces(d, cropper) for d in decoded] if cropper else [None] * len(decoded)
            feats = encode_frames(encoders["visual"], decoded, cfg.batch_size)
            n_frames = sum(len(f) for f in feats)
            _save_shard(plan.paths["visual"][i], plan.keys[i]["visual"],
                        _pack(decoded, feats, [d.visual_status if f is not False else "no_face"
                                               for d, f in zip(decoded, faces)]),
                        {"modality": "visual", "clips": len(decoded)})
        if want_a:
            usable = [d.wave if d.audio_status in ("ok", "silent") else None for d in decoded]
            feats = encode_audio(encoders["audio"], usable, [d.n_steps for d in decoded], cfg.fps,
                                 cfg.audio.window_s, cfg.batch_size)
            _save_shard(plan.paths["audio"][i], plan.keys[i]["audio"],
                        _pack(decoded, feats, [d.audio_status for d in decoded]),
                        {"modality": "audio", "clips": len(decoded)})
    if want_t:
        _save_text_shard(plan.paths["text"][i], plan.keys[i]["text"], plan.shards[i], plan.texts, encoders["text"])
    return n_frames


def finish_extract(plan: ExtractPlan, seconds: float, n_frames: int, report_dir: Path | None) -> ExtractResult:
    """Index, manifest and the feature checkpoint, once every shard is complete."""
    cfg = plan.params.extract
    missing = [str(plan.paths[m][i]) for m in MODALITIES for i in range(len(plan.shards))
               if not shard_done(plan.paths[m][i], plan.keys[i][m])]
    if missing:
        raise ExtractError(f"{len(missing)} shard(s) are not complete: {', '.join(missing[:5])}")
    index = build_index(plan.clips, plan.shards, plan.paths)
    write_text(plan.out_dir / "index.csv", index.to_csv(index=False))
    resolved = [resolve(getattr(cfg, m), f"extract.{m}") for m in MODALITIES]
    manifest = {
        "fps": cfg.fps,
        "dims": {m: getattr(cfg, m).dim for m in MODALITIES},
        "encoders": [r.__dict__ | {"random_init": r.random_init} for r in resolved],
        "random_init": [r.role for r in resolved if r.random_init],
        "shards": {m: len(plan.shards) for m in MODALITIES},
        "shards_done_now": {m: len(plan.todo[m]) for m in MODALITIES},
        "clips": len(plan.clips),
        "seconds": round(seconds, 2),
    }
    write_json(plan.out_dir / "manifest.json", manifest)
    done_clips = sum(len(plan.shards[i]) for i in plan.shards_to_run)
    result = ExtractResult(plan.out_dir, len(plan.clips), manifest["shards_done_now"], seconds,
                           n_frames / seconds if seconds else 0.0, done_clips / seconds if seconds else 0.0, resolved)
    log.info("extracted %d clips (%d shard parts recomputed) in %.1f s: %.2f clips/s, %.1f frames/s", done_clips,
             sum(len(v) for v in plan.todo.values()), seconds, result.clips_per_s, result.frames_per_s)

    from emi.validation_features import validate_features

    result.report = validate_features(plan.out_dir, plan.params.download.validation.max_error_fraction, report_dir,
                                      plan.raw_dir)
    return result


@tracked("extract")
def extract(params: Params, raw_dir: Path, transcripts: Path, out_dir: Path, report_dir: Path | None = None,
            show_progress: bool = True) -> ExtractResult:
    started = time.perf_counter()
    plan = plan_extract(params, raw_dir, transcripts, out_dir)
    n_frames = 0
    with Progress(disable=not show_progress) as progress:
        bar = progress.add_task("extracting features", total=len(plan.shards_to_run) or 1)
        for i in plan.shards_to_run:
            n_frames += run_shard(plan, i)
            progress.advance(bar)
    return finish_extract(plan, time.perf_counter() - started, n_frames, report_dir)


def _read_transcripts(path: Path) -> dict[str, str | None]:
    """id -> transcript text; None when the clip has no usable transcript (empty, no audio, error)."""
    table = pd.read_csv(path, dtype={"id": str, "text": str}, keep_default_na=False)
    missing = {"id", "text", "status"} - set(table.columns)
    if missing:
        raise ExtractError(f"{path}: transcripts table lacks column(s) {', '.join(sorted(missing))}")
    return {r.id: (r.text.strip() or None) if r.status == "ok" else None for r in table.itertuples()}


def load_encoders(cfg: ExtractParams, device, dtype, needed: set[str], tuned: dict | None = None) -> dict:
    """The extract encoders; ``tuned`` (from a Stage-I model that fine-tuned encoder blocks) replaces those
    blocks' weights, so new clips are encoded exactly as the training clips were."""
    loaders = {"visual": load_visual, "audio": load_audio, "text": load_text}
    encoders = {m: loaders[m](getattr(cfg, m), device, dtype) for m in MODALITIES if m in needed}
    for enc in encoders.values():
        if enc.resolved.random_init:
            log.warning("%s uses RANDOM weights (allowed by the profile); reports say so", enc.resolved.describe())
    for m, entry in (tuned or {}).items():
        if m not in encoders:
            continue
        if entry["spec"] != _spec(cfg, m):
            raise ExtractError(f"extract.{m}: the Stage-I model fine-tuned {entry['spec']}, but the params say "
                               f"{_spec(cfg, m)}; use the params the model was trained with")
        load_block_state(encoders[m], entry["state"], f"extract.{m}")
        log.info("extract.%s: fine-tuned weights of %s", m, ", ".join(entry["blocks"]))
    return encoders


def _decode_all(shard: list[Clip], cfg: ExtractParams, want_v: bool, want_a: bool,
                max_duration_s: float | None) -> list[Decoded]:
    if cfg.decode_workers <= 1:
        return [decode_clip(c, cfg, want_v, want_a, max_duration_s) for c in shard]
    with ThreadPoolExecutor(cfg.decode_workers) as pool:  # PyAV releases the GIL while decoding
        return list(pool.map(lambda c: decode_clip(c, cfg, want_v, want_a, max_duration_s), shard))


def _crop_faces(decoded: Decoded, cropper: FaceCropper) -> bool | None:
    if not decoded.frames:
        return None
    crops = [cropper(f) for f in decoded.frames]
    if not any(found for _, found in crops):
        return False  # no face in any frame: the visual modality is masked for this clip
    decoded.frames = [crop for crop, _ in crops]
    return True


def _pack(decoded: list[Decoded], feats: list[np.ndarray], status: list[str]) -> dict[str, np.ndarray]:
    lengths = np.array([f.shape[0] for f in feats], np.int64)
    dim = feats[0].shape[1] if feats else 0
    data = np.concatenate(feats) if lengths.sum() else np.zeros((0, dim), np.float32)
    return {"ids": np.array([d.clip.id for d in decoded]), "lengths": lengths, "data": data.astype(np.float32),
            "status": np.array(status), "detail": np.array([d.detail for d in decoded])}


def _save_text_shard(path: Path, key: str, shard: list[Clip], texts: dict[str, str | None], encoder) -> None:
    vectors = np.zeros((len(shard), encoder.dim), np.float32)
    status = np.array(["ok" if texts.get(c.id) else ("missing" if c.id not in texts else "empty") for c in shard])
    # one transcript per call: padding to a batch-mate's length moves the mean-pooled vector in the 7th digit,
    # and a clip's features must not depend on which clips share its shard (nor differ from `emi predict`)
    for i, clip in enumerate(shard):
        if texts.get(clip.id):
            vectors[i] = encoder.encode([texts[clip.id]])[0]
    _save_shard(path, key, {"ids": np.array([c.id for c in shard]), "data": vectors, "status": status,
                            "lengths": np.ones(len(shard), np.int64), "detail": np.array([""] * len(shard))},
                {"modality": "text", "clips": len(shard)})


def build_index(clips: list[Clip], shards: list[list[Clip]], paths: dict[str, list[Path]]) -> pd.DataFrame:
    rows = []
    for i, shard in enumerate(shards):
        parts = {m: load_shard(paths[m][i]) for m in MODALITIES}
        offsets = np.concatenate([[0], np.cumsum(parts["visual"]["lengths"])[:-1]])
        a_offsets = np.concatenate([[0], np.cumsum(parts["audio"]["lengths"])[:-1]])
        for j, clip in enumerate(shard):
            v_status, a_status = str(parts["visual"]["status"][j]), str(parts["audio"]["status"][j])
            t_status = str(parts["text"]["status"][j])
            error = v_status == "error" or a_status == "error"
            rows.append({
                "id": clip.id, "split": clip.split, "shard": i,
                "offset": int(offsets[j]), "audio_offset": int(a_offsets[j]),
                "n_steps": int(parts["visual"]["lengths"][j]),
                "n_audio_steps": int(parts["audio"]["lengths"][j]),
                "status": "error" if error else "ok",
                "visual_status": v_status, "audio_status": a_status, "text_status": t_status,
                "has_visual": not error and v_status == "ok",
                "has_audio": not error and a_status == "ok",
                "has_text": not error and t_status == "ok",
                "detail": str(parts["visual"]["detail"][j] or parts["audio"]["detail"][j]),
            })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- reading features back
@dataclass
class FeatureSet:
    """Features of a set of clips, ready for the models: per-clip sequences plus modality masks (V, A, T)."""

    ids: list[str]
    splits: list[str]
    visual: list[np.ndarray]
    audio: list[np.ndarray]
    text: np.ndarray
    mask: np.ndarray  # (N, 3) bool: modality usable
    dims: dict[str, int]
    encoders: list[dict]


def load_features(out_dir: Path, splits: tuple[str, ...] | None = None) -> FeatureSet:
    """Features of every clip that was processed (status ok), optionally only some splits."""
    out_dir = Path(out_dir)
    index = pd.read_csv(out_dir / "index.csv", dtype={"id": str})
    manifest = json.loads((out_dir / "manifest.json").read_text())
    index = index[index["status"] == "ok"]
    if splits is not None:
        index = index[index["split"].isin(splits)]
    cache: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def shard(m: str, i: int) -> dict[str, np.ndarray]:
        if (m, i) not in cache:
            cache[(m, i)] = load_shard(out_dir / m / f"shard-{i:05d}.npz")
        return cache[(m, i)]

    visual, audio, text = [], [], []
    for row in index.itertuples():
        v, a, t = shard("visual", row.shard), shard("audio", row.shard), shard("text", row.shard)
        visual.append(v["data"][row.offset:row.offset + row.n_steps])
        audio.append(a["data"][row.audio_offset:row.audio_offset + row.n_audio_steps])
        text.append(t["data"][list(t["ids"]).index(row.id)])
    dims = manifest["dims"]
    return FeatureSet(
        ids=index["id"].tolist(), splits=index["split"].tolist(), visual=visual, audio=audio,
        text=np.stack(text) if text else np.zeros((0, dims["text"]), np.float32),
        mask=index[["has_visual", "has_audio", "has_text"]].to_numpy(bool), dims=dims,
        encoders=manifest["encoders"],
    )
