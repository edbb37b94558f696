"""Real speech from espeak-ng: the sentence (chosen by the dominant emotion, rarely saying how strong), vocal
bursts (laughter, "wow", "aww", sighs, gasps) and background noise."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import yaml
from scipy.signal import butter, lfilter, resample_poly, sosfilt

from emi.config import EMOTIONS, WordParams

SENTENCES_FILE = Path(__file__).with_name("sentences.yaml")
STRONG_FROM = 0.5  # a dominant intensity from here takes a strong intensity word, below it a mild one
BREATHS = {"(sigh)": (0.55, 0.6, 300.0, 2500.0), "(gasp)": (0.25, 0.25, 800.0, 4000.0)}
"""Breath bursts: base length (s), extra length at full strength (s), noise band (Hz)."""
VOICELESS_POWER = 5e-3  # a clip nobody speaks in still has its room's noise, at the SNR of a typical voice


class SpeechError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def sentence_bank() -> dict:
    return yaml.safe_load(SENTENCES_FILE.read_text(encoding="utf-8"))


def choose_sentence(rng: np.random.Generator, latent: np.ndarray, cfg: WordParams) -> tuple[str, str, str]:
    """(sentence, topic, intensity word): the topic is the dominant emotion (or "Neutral" when none is strong or
    the person does not talk about it); only a share ``cfg.intensity_rate`` of topical sentences says how strong."""
    bank = sentence_bank()
    top = int(np.argmax(latent))
    on_topic = rng.random() < cfg.on_topic
    if latent[top] < cfg.neutral_below or not on_topic:
        options = bank["neutral"]
        return options[int(rng.integers(len(options)))], "Neutral", ""
    template = bank["sentences"][EMOTIONS[top]][int(rng.integers(len(bank["sentences"][EMOTIONS[top]])))]
    word = ""
    if rng.random() < cfg.intensity_rate:
        words = bank["intensity"]["strong" if latent[top] >= STRONG_FROM else "mild"]
        word = words[int(rng.integers(len(words)))]
    return template.format(f"{word} " if word else ""), EMOTIONS[top], word


def choose_burst(rng: np.random.Generator, voice_shown: np.ndarray) -> str:
    """A vocal burst for the emotion the voice shows most."""
    options = sentence_bank()["bursts"][EMOTIONS[int(np.argmax(voice_shown))]]
    return options[int(rng.integers(len(options)))]


def burst_words(token: str, strength: float) -> str:
    """What espeak-ng says for a burst token ("" for a breath): a "+" syllable repeats more when stronger."""
    if token in BREATHS:
        return ""
    if token.endswith("+"):
        return " ".join([token[:-1]] * (2 + int(round(3 * min(strength, 1.0)))))
    return token


def breath(rng: np.random.Generator, token: str, strength: float, sample_rate: int) -> np.ndarray:
    """A sigh (slow exhale) or a gasp (sharp inhale): band-limited noise under a breath-shaped envelope, longer
    and louder when stronger."""
    base, extra, low, high = BREATHS[token]
    s = float(np.clip(strength, 0.0, 1.5))
    n = int((base + extra * min(s, 1.0)) * sample_rate)
    sos = butter(2, [low, min(high, 0.45 * sample_rate)], btype="band", fs=sample_rate, output="sos")
    x = sosfilt(sos, rng.standard_normal(n))
    t = np.linspace(0.0, 1.0, n)
    if token == "(sigh)":  # quick start, long fading exhale
        envelope = np.minimum(t / 0.15, 1.0) * (1 - t) ** 1.5
    else:  # a swelling inhale cut off sharply
        envelope = np.sin(np.pi * t) ** 0.5 * (t < 0.9)
    x = x * envelope / (np.sqrt(np.mean(x**2)) + 1e-9)
    return (x * (0.04 + 0.06 * s)).astype(np.float32)


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechError("espeak-ng is not installed (apt-get install espeak-ng); `make setup` installs it")
    return exe


def synthesize(text: str, voice: str, pitch: float, rate: float, amplitude: float, word_gap: float,
               sample_rate: int) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at ``sample_rate``."""
    cmd = [
        espeak_binary(), "--stdout", "-v", voice,
        "-p", str(int(np.clip(pitch, 0, 99))),
        "-s", str(int(np.clip(rate, 80, 400))),
        "-a", str(int(np.clip(amplitude, 10, 200))),
        "-g", str(int(np.clip(word_gap, 0, 40))),
        text,
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise SpeechError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    with wave.open(io.BytesIO(proc.stdout)) as wav:
        native = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    if native != sample_rate:
        g = gcd(native, sample_rate)
        audio = resample_poly(audio, sample_rate // g, native // g).astype(np.float32)
    return audio


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise (Voss-McCartney approximation by a standard IIR filter), unit RMS."""
    b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
    a = [1, -2.494956002, 2.017265875, -0.522189400]
    x = lfilter(b, a, rng.standard_normal(n + 2000))[2000:]
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def add_noise(rng: np.random.Generator, speech: np.ndarray, snr_db: float) -> np.ndarray:
    """Background noise at ``snr_db`` relative to the active-speech power."""
    active = speech[np.abs(speech) > 0.01]
    power = float(np.mean(active**2)) if active.size else VOICELESS_POWER
    noise = pink_noise(rng, speech.size) * np.sqrt(power / 10 ** (snr_db / 10))
    mixed = speech + noise
    peak = float(np.max(np.abs(mixed)))
    return (mixed / peak * 0.95 if peak > 0.95 else mixed).astype(np.float32)


def loudness(voice: np.ndarray, sample_rate: int, times: np.ndarray, window_s: float = 0.05) -> np.ndarray:
    """The voice's RMS around each time, scaled so ordinary speech is about 1 (drives the talking mouth)."""
    power = np.concatenate([[0.0], np.cumsum(voice.astype(np.float64) ** 2)])
    half = int(window_s * sample_rate / 2)
    centre = np.clip((np.asarray(times) * sample_rate).astype(int), 0, voice.size)
    lo, hi = np.clip(centre - half, 0, voice.size), np.clip(centre + half, 0, voice.size)
    rms = np.sqrt((power[hi] - power[lo]) / np.maximum(hi - lo, 1))
    return np.clip(rms / 0.12, 0.0, 1.0)

