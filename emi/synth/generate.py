"""vidmimic-synth: a dataset in the Hume-Vidmimic2 layout whose labels every modality can recover.

All randomness is drawn up front from the seed (one generator per clip), so the dataset is the same for
the same seed and params whatever the number of workers, and a killed run resumes clip by clip.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.config import EMOTIONS, SPLIT_HEADER, SyntheticParams
from emi.data.dataset import GENERATOR_DIR, LATENTS_FILE
from emi.data.media import write_mp4
from emi.synth import face, latent, speech
from emi.utils import fingerprint, remove_temporaries, write_json, write_text

SPEECH_LEAD_S = (0.2, 0.6)  # silence before the speech starts
SPEECH_TAIL_S = 0.25  # silence kept after it ends
CORRUPTIONS = ("occlusion", "heavy_noise", "muted_audio", "missing_audio")


@dataclass
class ClipPlan:
    """Everything random about one clip, fixed before rendering."""

    index: int
    id: str
    split: str
    latent: list[float]
    label: list[float]
    expressiveness: float
    corruption: str
    voice: str
    sentence: str
    sentence_bucket: str
    duration_s: float
    snr_db: float
    seed: list[int] = field(default_factory=list)

    @property
    def shown(self) -> np.ndarray:
        return np.clip(np.asarray(self.latent) * self.expressiveness, 0, 1.5)


def plan_dataset(params: SyntheticParams, seed: int) -> list[ClipPlan]:
    rng = np.random.default_rng([seed, 0])
    n = params.n_clips
    latents = latent.sample_latents(rng, n, params)
    labels = latent.labels_from_latents(rng, latents, params.label_noise)
    expressiveness = np.clip(rng.normal(1.0, params.individual_variation, n), 0.4, 1.6)

    order = rng.permutation(n)
    n_train = int(round(params.splits.train * n))
    n_valid = int(round(params.splits.valid * n))
    split_of = np.empty(n, dtype=object)
    split_of[order[:n_train]] = "train"
    split_of[order[n_train:n_train + n_valid]] = "valid"
    split_of[order[n_train + n_valid:]] = "test"

    corruption = np.full(n, "none", dtype=object)
    pool = rng.permutation(n)
    start = 0
    for name in CORRUPTIONS:
        count = int(round(getattr(params.corruptions, name) * n))
        corruption[pool[start:start + count]] = name
        start += count

    plans = []
    for i in range(n):
        crng = np.random.default_rng([seed, 1, i])
        shown = np.clip(latents[i] * expressiveness[i], 0, 1.5)
        sentence, bucket = speech.choose_sentence(crng, shown)
        snr = params.heavy_noise_snr_db if corruption[i] == "heavy_noise" else crng.uniform(*params.snr_db)
        plans.append(
            ClipPlan(
                index=i,
                id=f"{i:05d}",
                split=str(split_of[i]),
                latent=[float(x) for x in latents[i]],
                label=[float(round(x, 6)) for x in labels[i]],
                expressiveness=float(expressiveness[i]),
                corruption=str(corruption[i]),
                voice=params.voices[int(crng.integers(len(params.voices)))],
                sentence=sentence,
                sentence_bucket=bucket,
                duration_s=float(crng.uniform(*params.duration_s)),
                snr_db=float(snr),
                seed=[seed, 2, i],
            )
        )
    return plans


def render_clip(plan: ClipPlan, params: SyntheticParams, out_path: Path) -> dict:
    """Render video + speech for one clip into ``out_path``; return what was rendered."""
    rng = np.random.default_rng(plan.seed)
    shown = plan.shown
    controls = latent.face_controls(shown)
    pitch, rate, amplitude, gap = latent.prosody_controls(shown)
    sr = params.audio_sample_rate

    lead = rng.uniform(*SPEECH_LEAD_S)
    voice = speech.synthesize(plan.sentence, plan.voice, pitch, rate, amplitude, gap, sr)
    room = params.duration_s[1] - lead - SPEECH_TAIL_S
    if voice.size / sr > room:  # slow, gappy speech would overrun the clip: speak faster instead
        rate *= voice.size / sr / room * 1.05
        gap = 0.0
        voice = speech.synthesize(plan.sentence, plan.voice, pitch, rate, amplitude, gap, sr)
    duration = max(plan.duration_s, lead + voice.size / sr + SPEECH_TAIL_S)
    n_samples = int(round(duration * sr))
    track = np.zeros(n_samples, dtype=np.float32)
    start = int(lead * sr)
    track[start:start + voice.size] = voice[: n_samples - start]
    track = speech.add_noise(rng, track, plan.snr_db)
    audio: np.ndarray | None = track
    if plan.corruption == "muted_audio":
        audio = np.zeros_like(track)
    elif plan.corruption == "missing_audio":
        audio = None

    style = face.FaceStyle.sample(rng)
    envelope = face.Envelope.sample(rng, duration)
    renderer = face.FaceRenderer(style, params.resolution, rng, occlusion=plan.corruption == "occlusion")
    n_frames = int(round(duration * params.video_fps))
    times = np.arange(n_frames) / params.video_fps
    strength = envelope(times)
    frames = (renderer(t, controls * a) for t, a in zip(times, strength))
    write_mp4(out_path, frames, params.video_fps, audio, sr)

    return {
        "id": plan.id,
        "rendered_duration_s": round(n_frames / params.video_fps, 4),
        "speech_onset_s": round(lead, 4),
        "speech_s": round(voice.size / sr, 4),
        "pitch": round(float(pitch), 3),
        "rate": round(float(rate), 3),
        "amplitude": round(float(amplitude), 3),
        "word_gap": round(float(gap), 3),
        **{f"face_{name}": round(float(v), 5) for name, v in zip(latent.FACE_CONTROLS, controls)},
        "envelope_mean": round(float(strength.mean()), 5),
        "skin": "#%02x%02x%02x" % style.skin,
    }


def _render_job(args: tuple[ClipPlan, SyntheticParams, Path, Path]) -> dict:
    plan, params, out_path, receipt = args
    facts = render_clip(plan, params, out_path)
    write_text(receipt, json.dumps(facts))  # written after the clip: a receipt means the clip is complete
    return facts


def generate(params: SyntheticParams, seed: int, out_dir: Path, workers: int = 1,
             show_progress: bool = True) -> dict:
    """Write the dataset into ``out_dir`` (resuming clips already rendered there for the same params), rendering in
    ``workers`` processes (the bytes do not depend on how many). Returns its
    provenance (``n_clips``, ``fingerprint``: the same for the same params and seed) and ``rendered_now``, how many
    clips this run rendered (a fact of the run, not of the data)."""
    out_dir = Path(out_dir)
    clip_dir = out_dir / "raw"
    gen_dir = out_dir / GENERATOR_DIR
    receipt_dir = gen_dir / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    receipt_dir.mkdir(parents=True, exist_ok=True)
    key = fingerprint({"params": params.model_dump(mode="json"), "seed": seed, "version": 1})
    stamp = gen_dir / "fingerprint"
    if stamp.exists() and stamp.read_text().strip() != key:
        for p in [*clip_dir.glob("*.mp4"), *receipt_dir.glob("*.json")]:
            p.unlink()
    write_text(stamp, key)
    for folder in (clip_dir, receipt_dir):  # a run killed mid-write leaves temporaries the output would take in
        remove_temporaries(folder)

    plans = plan_dataset(params, seed)
    todo = [p for p in plans if not (receipt_dir / f"{p.id}.json").exists() or not (clip_dir / f"{p.id}.mp4").exists()]
    jobs = [(p, params, clip_dir / f"{p.id}.mp4", receipt_dir / f"{p.id}.json") for p in todo]
    workers = min(workers, os.cpu_count() or 1, max(len(jobs), 1))
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task(f"rendering {len(jobs)} clips", total=len(jobs))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_render_job, jobs, chunksize=1):
                    progress.advance(task)
        else:
            for job in jobs:
                _render_job(job)
                progress.advance(task)

    rendered = {p.id: json.loads((receipt_dir / f"{p.id}.json").read_text()) for p in plans}
    _write_tables(plans, rendered, out_dir)
    return {"n_clips": len(plans), "rendered_now": len(jobs), "fingerprint": key}


def _write_tables(plans: list[ClipPlan], rendered: dict[str, dict], out_dir: Path) -> None:
    for split in ("train", "valid", "test"):
        rows = [[p.id, *p.label] for p in plans if p.split == split]
        table = pd.DataFrame(rows, columns=list(SPLIT_HEADER))
        write_text(out_dir / f"{split}_split.csv", table.to_csv(index=False, float_format="%.6f"))
    rows = []
    for p in plans:
        row = {"id": p.id, "split": p.split, "corruption": p.corruption, "expressiveness": p.expressiveness}
        row.update({f"latent_{e}": v for e, v in zip(EMOTIONS, p.latent)})
        row.update({"voice": p.voice, "sentence": p.sentence, "sentence_bucket": p.sentence_bucket,
                    "snr_db": p.snr_db})
        row.update({k: v for k, v in rendered[p.id].items() if k != "id"})
        rows.append(row)
    write_text(out_dir / GENERATOR_DIR / LATENTS_FILE, pd.DataFrame(rows).to_csv(index=False))
    write_json(out_dir / GENERATOR_DIR / "about.json", {
        "generator": "vidmimic-synth",
        "face_controls": list(latent.FACE_CONTROLS),
        "prosody_controls": list(latent.PROSODY_CONTROLS),
        "note": "labels = latent + annotator noise; face_* columns are the rendered apex controls "
                "(an oracle regressor on them gives the ceiling)",
    })
