"""The persons filmed: one face, one voice and one expressiveness each, the same in every clip of theirs; the
splits take whole persons, so the people in valid and test never appear in train (as in a real corpus split by
participant)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emi.config import SplitFractions, SyntheticParams
from emi.data.dataset import SPLITS
from emi.synth.face import Identity, Setting
from emi.synth.latent import FACE_CONTROLS

MOVING = ("head_motion",)  # idle head motion is drawn per clip; a resting face has none of its own


@dataclass(frozen=True)
class Person:
    index: int
    identity: Identity
    setting: Setting  # where they record: background, light, framing
    resting: tuple[float, ...]  # resting expression: face-control offsets held when nothing is expressed
    voice: str
    pitch: float  # espeak-ng pitch offset from the neutral 45
    rate: float  # speaking-rate factor
    face_gain: float
    voice_gain: float


def sample_people(rng: np.random.Generator, params: SyntheticParams) -> list[Person]:
    cfg = params.people
    people = []
    for i in range(cfg.count):
        resting = rng.normal(0.0, cfg.resting_face, len(FACE_CONTROLS))
        resting[[FACE_CONTROLS.index(c) for c in MOVING]] = 0.0
        face_gain, voice_gain = np.exp(rng.normal(0.0, cfg.expressiveness, 2))
        people.append(Person(
            index=i,
            identity=Identity.sample(rng),
            setting=Setting.sample(rng),
            resting=tuple(float(round(x, 4)) for x in resting),
            voice=params.voices[int(rng.integers(len(params.voices)))],
            pitch=float(rng.normal(0.0, cfg.pitch_spread)),
            rate=float(np.exp(rng.normal(0.0, cfg.rate_spread))),
            face_gain=float(face_gain),
            voice_gain=float(voice_gain),
        ))
    return people


def cast(rng: np.random.Generator, n_clips: int, n_people: int) -> np.ndarray:
    """The person in each clip: some people record many clips, some few (gamma-distributed shares)."""
    share = rng.gamma(2.0, 1.0, n_people)
    return rng.choice(n_people, n_clips, p=share / share.sum())


def split_by_person(rng: np.random.Generator, person_of: np.ndarray, fractions: SplitFractions) -> np.ndarray:
    """Each clip's split, whole persons at a time: persons in random order, each to the split furthest below its
    share of clips (so every split with a share gets someone, given enough persons)."""
    target = np.array([getattr(fractions, s) for s in SPLITS]) * len(person_of)
    have = np.zeros(len(SPLITS))
    split_of = np.empty(len(person_of), dtype=object)
    people, counts = np.unique(person_of, return_counts=True)
    for j in rng.permutation(len(people)):
        k = int(np.argmax(np.where(target > 0, target - have, -np.inf)))
        split_of[person_of == people[j]] = SPLITS[k]
        have[k] += counts[j]
    return split_of
