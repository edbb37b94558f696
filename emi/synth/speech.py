"""Real speech from espeak-ng, with the sentence and prosody chosen by the clip's intensities."""

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
from scipy.signal import lfilter, resample_poly

from emi.config import EMOTIONS

SENTENCES_FILE = Path(__file__).with_name("sentences.yaml")
NEUTRAL_BELOW = 0.25
STRONG_FROM = 0.5


class SpeechError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def sentence_bank() -> dict:
    return yaml.safe_load(SENTENCES_FILE.read_text(encoding="utf-8"))


def choose_sentence(rng: np.random.Generator, shown: np.ndarray) -> tuple[str, str]:
    """(sentence, bucket) for the dominant emotion and its strength; bucket like 'Joy/strong'."""
    bank = sentence_bank()
    top = int(np.argmax(shown))
    if shown[top] < NEUTRAL_BELOW:
        options, bucket = bank["Neutral"], "Neutral"
    else:
        level = "strong" if shown[top] >= STRONG_FROM else "mild"
        options, bucket = bank[EMOTIONS[top]][level], f"{EMOTIONS[top]}/{level}"
    return options[int(rng.integers(len(options)))], bucket


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
    power = float(np.mean(active**2)) if active.size else 1e-4
    noise = pink_noise(rng, speech.size) * np.sqrt(power / 10 ** (snr_db / 10))
    mixed = speech + noise
    peak = float(np.max(np.abs(mixed)))
    return (mixed / peak * 0.95 if peak > 0.95 else mixed).astype(np.float32)
