"""vidmimic-synth: a dataset in the Hume-Vidmimic2 layout whose clips have the structure of mimicry recordings.

People (one face, voice and expressiveness each; splits by person) are filmed in clips of varied length that are
mostly neutral: one or two brief episodes carry the expression on the face and often in the voice (a laugh, a
sigh, "wow", or the sentence said with feeling). The sentence names the dominant emotion, rarely how strong it is;
some clips have no words. Labels are the mean of a few biased, noisy raters (emi.synth.latent).

All randomness is drawn up front from the seed (one generator per clip), so the dataset is the same for
the same seed and params whatever the number of workers, and a killed run resumes clip by clip.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from emi.config import EMOTIONS, SPLIT_HEADER, SyntheticParams
from emi.data.dataset import GENERATOR_DIR, LATENTS_FILE
from emi.data.media import write_mp4
from emi.synth import face, latent, speech, timeline
from emi.synth.people import Person, cast, sample_people, split_by_person
from emi.synth.timeline import VOICE_PAD_S, Episode
from emi.utils import end_with_parent, fingerprint, remove_temporaries, write_json, write_text

CORRUPTIONS = ("occlusion", "heavy_noise", "muted_audio", "missing_audio")
RISE, FALL = (0.2, 0.4), (0.3, 0.5)  # share of an episode spent rising to / falling from its apex


@dataclass
class ClipPlan:
    """Everything random about one clip, fixed before rendering."""

    index: int
    id: str
    split: str
    person: Person
    latent: list[float]
    label: list[float]
    raters: list[int]
    face_gain: list[float]  # per emotion: the person's gain on the face times this clip's own draw
    voice_gain: list[float]
    corruption: str
    duration_s: float  # drawn; a clip whose content needs more is longer (up to the longest clip)
    snr_db: float
    sentence: str  # "" when the person says nothing
    topic: str  # the emotion the sentence is about, "Neutral", or "" without one
    intensity_word: str
    episodes: list[Episode]  # the strongest first
    seed: list[int] = field(default_factory=list)


def plan_dataset(params: SyntheticParams, seed: int) -> list[ClipPlan]:
    rng = np.random.default_rng([seed, 0])
    n = params.n_clips
    latents = latent.sample_latents(rng, n, params)
    labels, raters = latent.rate(rng, latents, params.raters)
    people = sample_people(np.random.default_rng([seed, 3]), params)
    person_of = cast(rng, n, len(people))
    split_of = split_by_person(rng, person_of, params.splits)

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
        person = people[person_of[i]]
        face_gain, voice_gain = np.array([[person.face_gain], [person.voice_gain]]) * np.exp(
            crng.normal(0.0, params.episodes.channel_noise, (2, len(EMOTIONS))))
        plan = ClipPlan(
            index=i, id=f"{i:05d}", split=str(split_of[i]), person=person,
            latent=[float(x) for x in latents[i]], label=[float(round(x, 6)) for x in labels[i]],
            raters=[int(r) for r in raters[i]], face_gain=[float(g) for g in face_gain],
            voice_gain=[float(g) for g in voice_gain],
            corruption=str(corruption[i]), duration_s=0.0, snr_db=0.0, sentence="", topic="", intensity_word="",
            episodes=[], seed=[seed, 2, i])
        plans.append(_plan_clip(plan, crng, params))
    return plans


def _plan_clip(plan: ClipPlan, rng: np.random.Generator, params: SyntheticParams) -> ClipPlan:
    """The clip's words, episodes, length and noise."""
    cfg = params.episodes
    if rng.random() < params.words.rate:
        plan.sentence, plan.topic, plan.intensity_word = speech.choose_sentence(rng, np.array(plan.latent),
                                                                                params.words)
    voice_shown = latent.shown(plan.latent, cfg.voice_weight, plan.voice_gain)
    n_episodes = 2 if rng.random() < cfg.second_rate else 1
    for k in range(n_episodes):
        in_episode = k == 0 and bool(plan.sentence) and rng.random() < params.words.in_episode
        vocal = "speech" if in_episode else ("burst" if rng.random() < cfg.burst_rate else "none")
        plan.episodes.append(Episode(
            length=float(rng.uniform(*cfg.duration_s)),
            strength=1.0 if k == 0 else float(rng.uniform(*cfg.second_strength)),
            rise=float(rng.uniform(*RISE)), fall=float(rng.uniform(*FALL)), vocal=vocal,
            burst=speech.choose_burst(rng, voice_shown) if vocal == "burst" else ""))
    plan.duration_s = timeline.draw_duration(rng, *params.duration_s, params.mean_duration_s)
    plan.snr_db = float(params.heavy_noise_snr_db if plan.corruption == "heavy_noise" else rng.uniform(*params.snr_db))
    return plan


@dataclass
class Voice:
    """One thing the person voices: its waveform and its words ("" for a breath)."""

    wave: np.ndarray
    words: str


def _voices(plan: ClipPlan, episodes: list[Episode], shown: np.ndarray, sr: int, rng: np.random.Generator,
            speed: float) -> tuple[list[Voice | None], Voice | None]:
    """What is voiced in each episode (None: the face alone) and the sentence said neutrally, if any."""
    person = plan.person

    def say(text: str, controls: np.ndarray) -> np.ndarray:
        pitch, rate, amplitude, gap = controls
        return speech.synthesize(text, person.voice, pitch + person.pitch, rate * person.rate * speed, amplitude,
                                 gap, sr)

    per_episode: list[Voice | None] = []
    for episode in episodes:
        controls = latent.prosody_controls(shown * episode.strength)
        if episode.vocal == "speech":
            per_episode.append(Voice(say(plan.sentence, controls), plan.sentence))
        elif episode.vocal == "burst" and episode.burst in speech.BREATHS:
            wave = speech.breath(rng, episode.burst, float(shown.max()) * episode.strength, sr)
            per_episode.append(Voice(wave, ""))
        elif episode.vocal == "burst":
            words = speech.burst_words(episode.burst, float(shown.max()) * episode.strength)
            per_episode.append(Voice(say(words, controls), words))
        else:
            per_episode.append(None)
    neutral = None
    if plan.sentence and not any(e.vocal == "speech" for e in episodes):
        controls = latent.prosody_controls(np.zeros(len(EMOTIONS)))
        neutral = Voice(say(plan.sentence, controls), plan.sentence)
    return per_episode, neutral


def _fit(plan: ClipPlan, params: SyntheticParams, shown: np.ndarray, rng: np.random.Generator):
    """Voices, episodes (lengths grown to hold their voice, start times set), the neutral sentence's start and the
    clip's length. Content longer than the longest clip loses the weaker episode, then is spoken faster."""
    sr, hi = params.audio_sample_rate, params.duration_s[1]
    episodes, speed = list(plan.episodes), 1.0
    for attempt in range(3):
        voices, neutral = _voices(plan, episodes, shown, sr, rng, speed)
        lengths = [e.length if v is None else max(e.length, v.wave.size / sr + 2 * VOICE_PAD_S)
                   for e, v in zip(episodes, voices)]
        blocks = lengths + ([neutral.wave.size / sr] if neutral else [])
        need = timeline.needed_s(blocks)
        if need <= hi or attempt == 2:
            break
        if attempt == 0 and len(episodes) > 1:
            episodes = episodes[:1]
        else:
            speed *= need / hi * 1.1
    duration = max(plan.duration_s, need)
    starts = timeline.place(rng, blocks, duration)
    episodes = [replace(e, length=length, start=start) for e, length, start in zip(episodes, lengths, starts)]
    return episodes, voices, neutral, (starts[-1] if neutral else 0.0), duration


def _audio(plan: ClipPlan, sr: int, duration: float, episodes: list[Episode], voices: list[Voice | None],
           neutral: Voice | None, neutral_start: float, rng: np.random.Generator):
    """(the voice alone, the recorded track or None, the words in the order said)."""
    voice = np.zeros(int(round(duration * sr)), dtype=np.float32)
    said = []
    events = [(e.voice_start(v.wave.size / sr), v) for e, v in zip(episodes, voices) if v is not None]
    events += [(neutral_start, neutral)] if neutral else []
    for start, v in sorted(events, key=lambda x: x[0]):
        at = int(start * sr)
        piece = v.wave[: max(voice.size - at, 0)]
        voice[at:at + piece.size] += piece
        said.append(v.words)
    track = speech.add_noise(rng, voice, plan.snr_db)
    if plan.corruption == "muted_audio":
        track = np.zeros_like(track)
    return voice, (None if plan.corruption == "missing_audio" else track), " ".join(w for w in said if w)


def render_clip(plan: ClipPlan, params: SyntheticParams, out_path: Path) -> dict:
    """Render video + voice for one clip into ``out_path``; return what was rendered."""
    rng = np.random.default_rng(plan.seed)
    sr, fps = params.audio_sample_rate, params.video_fps
    voice_shown = latent.shown(plan.latent, params.episodes.voice_weight, plan.voice_gain)
    episodes, voices, neutral, neutral_start, duration = _fit(plan, params, voice_shown, rng)
    voice, track, script = _audio(plan, sr, duration, episodes, voices, neutral, neutral_start, rng)

    n_frames = int(round(duration * fps))
    times = np.arange(n_frames) / fps
    strength = timeline.profile(episodes, times)
    apex, _ = apex_controls(plan, params, episodes)
    rest = np.asarray(plan.person.resting)
    talk = speech.loudness(voice, sr, times)
    blink = face.blinks(rng, times)
    style = face.FaceStyle.sample(rng, plan.person.identity, plan.person.setting)
    renderer = face.FaceRenderer(style, params.resolution, rng, occlusion=plan.corruption == "occlusion")
    frames = (renderer(t, rest + a * apex, k, b) for t, a, k, b in zip(times, strength, talk, blink))
    write_mp4(out_path, frames, fps, track, sr)
    return _facts(plan, params, episodes, script, n_frames / fps, style)


def apex_controls(plan: ClipPlan, params: SyntheticParams, episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """The ceiling's inputs: the face controls at the strongest episode's apex (above the resting face) and the
    prosody of the strongest voiced episode (neutral when no episode is voiced)."""
    face_shown = latent.shown(plan.latent, params.episodes.face_weight, plan.face_gain)
    voice_shown = latent.shown(plan.latent, params.episodes.voice_weight, plan.voice_gain)
    voiced = [e.strength for e in episodes if e.vocal != "none"]
    return latent.face_controls(face_shown), latent.prosody_controls(voice_shown * (voiced[0] if voiced else 0.0))


def _facts(plan: ClipPlan, params: SyntheticParams, episodes: list[Episode], script: str, rendered_s: float,
           style: face.FaceStyle) -> dict:
    """What was rendered, for latents.csv."""
    apex, prosody = apex_controls(plan, params, episodes)
    return {
        "id": plan.id,
        "rendered_duration_s": round(rendered_s, 4),
        "sentence": script,
        "n_episodes": len(episodes),
        "episodes": ";".join(f"{e.start:.2f}-{e.start + e.length:.2f}@{e.strength:.2f}/{e.vocal}"
                             + (f":{e.burst}" if e.burst else "") for e in episodes),
        "expressive_s": round(sum(e.length for e in episodes), 3),
        **{name: round(float(v), 3) for name, v in zip(latent.PROSODY_CONTROLS, prosody)},
        **{f"face_{name}": round(float(v), 5) for name, v in zip(latent.FACE_CONTROLS, apex)},
        "skin": "#%02x%02x%02x" % style.identity.skin,
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
    key = fingerprint({"params": params.model_dump(mode="json"), "seed": seed, "version": 2})
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
            with ProcessPoolExecutor(workers, initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
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
        row = {"id": p.id, "split": p.split, "person": p.person.index, "corruption": p.corruption,
               "raters": " ".join(map(str, p.raters)), "gain_face": " ".join(f"{g:.3f}" for g in p.face_gain),
               "gain_voice": " ".join(f"{g:.3f}" for g in p.voice_gain)}
        row.update({f"latent_{e}": v for e, v in zip(EMOTIONS, p.latent)})
        row.update({"voice": p.person.voice, "topic_sentence": p.sentence, "topic": p.topic,
                    "intensity_word": p.intensity_word, "snr_db": p.snr_db})
        row.update({k: v for k, v in rendered[p.id].items() if k != "id"})
        rows.append(row)
    write_text(out_dir / GENERATOR_DIR / LATENTS_FILE, pd.DataFrame(rows).to_csv(index=False))
    write_json(out_dir / GENERATOR_DIR / "about.json", {
        "generator": "vidmimic-synth",
        "face_controls": list(latent.FACE_CONTROLS),
        "prosody_controls": list(latent.PROSODY_CONTROLS),
        "note": "labels = the mean of a few raters' scores of the latent intensities; clips are mostly neutral, "
                "with 1-2 expressive episodes ('episodes': start-end@strength/voice); face_* are the face controls at "
                "the strongest episode's apex (above the person's resting face), pitch/rate/amplitude/word_gap the "
                "prosody of the strongest voiced episode (neutral when none): an oracle regressor on them gives the "
                "ceiling; 'sentence' is everything said aloud, in order (the transcript's reference)",
    })
