"""Typed configuration: ``params.yaml`` layered over a named profile, parsed once.

Resolution order (later wins):
  1. the profile file ``emi/profiles/<profile>.yaml`` (and the profiles it ``extends``),
  2. the sections of ``params.yaml`` (everything except the ``profile`` key),
  3. ``--set key.path=value`` overrides from the command line.
The merged mapping is validated into frozen pydantic models; unknown keys and wrong types
are errors that name the key, the file it came from and, for typos, the closest known key.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

EMOTIONS: tuple[str, ...] = (
    "Admiration",
    "Amusement",
    "Determination",
    "Empathic Pain",
    "Excitement",
    "Joy",
)
"""The six Hume-Vidmimic2 targets, in the order of the official split files."""

SPLIT_HEADER: tuple[str, ...] = ("Filename", *EMOTIONS)
MODALITIES: tuple[str, ...] = ("visual", "audio", "text")
"""The three modalities, in the order every array, mask and table uses."""
MODALITY_KEYS: dict[str, str] = dict(zip(MODALITIES, "VAT"))
"""Their one-letter names in the paper (V, A, T), used by the models and ablation names."""
SIGNIFICANT_SD = 2.0
"""Reports mark a difference between two variants when its mean over training seeds exceeds this many standard
deviations of the paired per-seed difference (with 60 validation clips a 0.01 gap can be noise)."""
PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file or override that cannot be turned into a valid configuration."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- download
class CorruptionParams(Strict):
    """Fraction of clips receiving each corruption (a clip gets at most one)."""

    occlusion: float = Field(ge=0, le=1)
    heavy_noise: float = Field(ge=0, le=1)
    muted_audio: float = Field(ge=0, le=1)
    missing_audio: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _total_at_most_one(self) -> CorruptionParams:
        total = self.occlusion + self.heavy_noise + self.muted_audio + self.missing_audio
        if total > 1:
            raise ValueError(f"corruption fractions add up to {total:.3f} > 1")
        return self


class SplitFractions(Strict):
    train: float = Field(gt=0, le=1)
    valid: float = Field(gt=0, le=1)
    test: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.valid + self.test
        if abs(total - 1) > 1e-6:
            raise ValueError(f"split fractions add up to {total:.6f}, not 1")
        return self


class PeopleParams(Strict):
    """The people filmed: each has one face, one voice and an expressiveness, the same in every clip of theirs."""

    count: int = Field(ge=1, description="persons in the pool; splits are by person (no one in two splits)")
    expressiveness: float = Field(
        ge=0, description="sd of a person's log gain on face and on voice (how much they show)"
    )
    resting_face: float = Field(
        ge=0, description="sd of a person's resting expression (a neutral face that looks glad, stern, ...)"
    )
    pitch_spread: float = Field(ge=0, description="sd of a person's voice pitch around espeak-ng's 50 (0-99 scale)")
    rate_spread: float = Field(ge=0, description="sd of a person's speaking rate, relative to the mean rate")


class EpisodeParams(Strict):
    """Brief expressive episodes at random positions: face and voice are neutral outside them, and how strong an
    emotion is shows only there."""

    second_rate: float = Field(ge=0, le=1, description="share of clips with a second, weaker episode")
    duration_s: tuple[float, float] = Field(description="range of an episode's length in seconds, onset to offset")
    second_strength: tuple[float, float] = Field(
        description="range of the weaker episode's strength, relative to the strongest"
    )
    channel_noise: float = Field(
        ge=0, description="sd of a clip's log gain per emotion, drawn apart for face and voice: each a noisy view"
    )
    face_weight: dict[str, float] = Field(description="how much each emotion shows on the face, 0-1")
    voice_weight: dict[str, float] = Field(description="how much each emotion shows in the voice, 0-1")
    burst_rate: float = Field(
        ge=0, le=1, description="share of episodes with a vocal burst (laugh, sigh, gasp, 'wow', 'hmm')"
    )

    @model_validator(mode="after")
    def _ranges(self) -> EpisodeParams:
        lo, hi = self.duration_s
        if not 0 < lo <= hi:
            raise ValueError(f"episodes.duration_s must be 0 < min <= max, got {self.duration_s}")
        lo, hi = self.second_strength
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"episodes.second_strength must be 0 < min <= max <= 1, got {self.second_strength}")
        for name in ("face_weight", "voice_weight"):
            weights = getattr(self, name)
            if set(weights) != set(EMOTIONS) or not all(0 <= w <= 1 for w in weights.values()):
                raise ValueError(f"episodes.{name} must give each of {list(EMOTIONS)} a weight in [0, 1]")
        return self


class WordParams(Strict):
    """What is said: the sentence names the dominant emotion, rarely how strong it is."""

    rate: float = Field(
        ge=0, le=1, description="share of clips with a sentence (the rest: vocal bursts only, or only noise)"
    )
    on_topic: float = Field(
        ge=0, le=1, description="share of sentences about the dominant emotion (the rest are neutral remarks)"
    )
    intensity_rate: float = Field(
        ge=0, le=1, description="share of sentences with an intensity word (so / a bit) that follows the strength"
    )
    in_episode: float = Field(
        ge=0, le=1, description="share of sentences said in the strongest episode, with its prosody (else neutrally)"
    )
    neutral_below: float = Field(
        ge=0, le=1, description="a clip whose strongest intensity is below this says a neutral sentence"
    )


class RaterParams(Strict):
    """Labels are the mean of a few raters' scores, each rater with a fixed bias and their own noise."""

    per_clip: int = Field(ge=1, description="raters scoring each clip (its label is their mean)")
    pool: int = Field(ge=1, description="raters in the pool each clip's raters are drawn from")
    bias: float = Field(ge=0, description="sd of a rater's fixed bias per emotion")
    noise: float = Field(ge=0, description="sd of a rater's noise per clip and emotion")

    @model_validator(mode="after")
    def _enough(self) -> RaterParams:
        if self.per_clip > self.pool:
            raise ValueError(f"raters.per_clip ({self.per_clip}) exceeds raters.pool ({self.pool})")
        return self


class SyntheticParams(Strict):
    """The embedded "vidmimic-synth" generator (see DESIGN.md and README)."""

    n_clips: int = Field(ge=3, description="clips to render")
    splits: SplitFractions = Field(description="share of clips per split (whole persons go to one split)")
    duration_s: tuple[float, float] = Field(description="shortest and longest clip in seconds")
    mean_duration_s: float = Field(
        gt=0, description="mean clip length; lengths are right-skewed (gamma) within duration_s"
    )
    video_fps: int = Field(ge=1, description="frames per second of the video")
    resolution: int = Field(ge=32, multiple_of=2, description="square frame side in pixels (even: 4:2:0 video)")
    audio_sample_rate: int = Field(ge=8000, description="audio samples per second")
    snr_db: tuple[float, float] = Field(description="background noise SNR range for clean clips")
    heavy_noise_snr_db: float = Field(description="SNR of the heavy_noise corruption")
    label_skew: float = Field(gt=0, description="exponent on the copula marginals; >1 skews labels low")
    latent_correlation: dict[str, float] = Field(
        description="pairwise latent correlations, keys 'Emotion A~Emotion B'"
    )
    people: PeopleParams = Field(description="the person pool")
    episodes: EpisodeParams = Field(description="the expressive episodes")
    words: WordParams = Field(description="the spoken sentence")
    raters: RaterParams = Field(description="the raters whose mean score is the label")
    voices: tuple[str, ...] = Field(min_length=1, description="espeak-ng voices the persons are given")
    corruptions: CorruptionParams = Field(description="share of clips per corruption")
    workers: int = Field(ge=1, description="clips rendered in parallel (the data is the same for any number)")

    @model_validator(mode="after")
    def _ranges(self) -> SyntheticParams:
        lo, hi = self.duration_s
        if not 0 < lo <= hi:
            raise ValueError(f"duration_s must be 0 < min <= max, got {self.duration_s}")
        if not lo <= self.mean_duration_s <= hi:
            raise ValueError(f"mean_duration_s {self.mean_duration_s} must lie within duration_s {self.duration_s}")
        for pair in self.latent_correlation:
            names = pair.split("~")
            bad = [n for n in names if n not in EMOTIONS]
            if len(names) != 2 or bad:
                raise ValueError(
                    f"latent_correlation key {pair!r} must be 'A~B' with A, B in {list(EMOTIONS)}"
                )
        return self


class LocalParams(Strict):
    path: Path | None = None
    mode: Literal["copy", "symlink"] = "copy"


class UrlParams(Strict):
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    cache_dir: Path = Path("data/cache")
    timeout_s: float = Field(default=60, gt=0)
    retries: int = Field(default=3, ge=0)


class TestClipsParams(Strict):
    """Where the test clips come from. ``auto``: ``test_split.csv`` when the dataset has one, else the clips in
    ``raw/`` that no split file lists (the ABAW release); ``folder``: the clips of ``folder``, brought into ``raw/``;
    ``none``: no test set. download writes the result as ``test_split.csv`` (ids only when unlabelled)."""

    clips: Literal["auto", "split", "unlisted", "folder", "none"] = "auto"
    folder: Path | None = None

    @model_validator(mode="after")
    def _folder(self) -> TestClipsParams:
        if self.clips == "folder" and self.folder is None:
            raise ValueError("download.test.clips is 'folder' but download.test.folder is not set")
        return self


class DownloadParams(Strict):
    source: Literal["synthetic", "local", "url"]
    synthetic: SyntheticParams
    local: LocalParams = LocalParams()
    url: UrlParams = UrlParams()
    test: TestClipsParams = TestClipsParams()


class DataParams(Strict):
    """What every stage that reads clips shares: the clip contract and the error tolerance."""

    max_error_fraction: float = Field(ge=0, le=1)  # fail when more than this fraction of clips has a problem
    min_duration_s: float = Field(gt=0)
    max_duration_s: float = Field(gt=0)  # longer clips are flagged in the raw-data report (never refused)
    silence_dbfs: float  # an audio track quieter than this (RMS, dBFS) counts as missing audio

    @model_validator(mode="after")
    def _durations(self) -> DataParams:
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s {self.min_duration_s} > max_duration_s {self.max_duration_s}")
        return self


# ----------------------------------------------------------- later stages (read by their issues)
class EncoderSpec(Strict):
    """An encoder: a hub id or a local path, and whether random init is explicitly allowed."""

    kind: str
    name: str
    pretrained: str | None = None
    path: Path | None = None
    allow_random_init: bool = False
    dim: int = Field(ge=1)
    pool_grid: int | None = Field(default=None, ge=1)  # CNN visual encoders: grid of pooled feature maps
    window_s: float | None = Field(default=None, gt=0)  # audio encoders: length of the windows encoded at once


class TranscribeParams(Strict):
    asr: EncoderSpec
    language: str
    beam_size: int = Field(ge=1)
    vad: bool
    device: Literal["auto", "cpu", "cuda"]
    compute_type: str
    shard_size: int = Field(ge=1)
    workers: int = Field(ge=1)  # clips transcribed concurrently (CTranslate2 workers, CPU threads split among them)
    # decoding temperatures: whisper retries a window at the next one when its log-prob or compression ratio fails;
    # above 0 it samples, from an unseeded per-thread RNG, so transcripts change from run to run
    temperatures: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)


class ExtractParams(Strict):
    fps: float = Field(gt=0)
    face_crop: bool
    visual: EncoderSpec
    audio: EncoderSpec
    text: EncoderSpec
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["fp32", "fp16", "bf16"]
    batch_size: int = Field(ge=1)
    decode_workers: int = Field(ge=0)
    shard_size: int = Field(ge=1)
    frame_max_side: int = Field(ge=16)  # frames are downscaled to this at decode: a 4K clip cannot exhaust memory
    # a clip with more grid steps is featurized on this many steps spread uniformly over it (frames and audio alike),
    # so one 20-minute clip costs what a 10-minute one does and fits in memory; its index row says so
    max_steps: int = Field(ge=1)
    visual_source: Literal["frames", "face_images"]  # face_images: the organisers' crops, <dataset>/face_images/<id>/
    face_margin: float = Field(ge=0)  # face_crop: box grown by this fraction on each side


class ScheduleParams(Strict):
    """SGDR (cosine annealing with warm restarts), paper section 4.3."""

    lr_max: float = Field(gt=0)
    lr_min: float = Field(ge=0)
    cycle_epochs: int = Field(ge=1)
    epochs: int = Field(ge=1)


class FinetuneParams(Strict):
    """Stage I end to end: the last k blocks of the visual/audio encoders trained with the heads, from frames and
    waveforms (paper section 3.3). k = 0 trains the heads alone over the cached features."""

    last_k_blocks: int = Field(ge=0)
    modalities: tuple[Literal["visual", "audio"], ...] = Field(min_length=1)
    lr: float = Field(gt=0)  # the encoder blocks' peak learning rate (the heads use schedule.lr_max)
    frames_per_clip: int = Field(ge=1)  # frames sampled from a clip's 5 fps grid per step (memory knob)
    audio_seconds: float = Field(gt=0)  # waveform crop per clip per step


class Stage1Params(Strict):
    embed_dim: int = Field(ge=1)
    temperature_init: float = Field(gt=0)
    finetune: FinetuneParams
    batch_size: int = Field(ge=2)
    weight_decay: float = Field(ge=0)
    schedule: ScheduleParams


AUGMENT_KINDS = ("occluded_face", "noisy_audio", "missing_audio", "missing_text")


class AugmentParams(Strict):
    """Corruption-aware Stage II training: one damaged copy of a share of the training clips (made once by the
    ``augment`` stage, through the one featurize path) and modality dropout per clip in every training batch."""

    fraction: float = Field(ge=0, le=1)  # share of training clips that get a damaged copy (0: none)
    kinds: tuple[Literal[AUGMENT_KINDS], ...] = Field(min_length=1)  # a copy's damage: one, drawn uniformly
    occlusion_box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
    noise_snr_db: tuple[float, float]  # a noisy copy's SNR, drawn uniformly from [low, high]
    modality_dropout: float = Field(ge=0, lt=1)  # per clip and modality; a clip keeps at least one modality

    @model_validator(mode="after")
    def _snr_range(self) -> AugmentParams:
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"noise_snr_db {list(self.noise_snr_db)} must be [low, high]")
        return self


class Stage2Params(Strict):
    width: int = Field(ge=1)
    tcn_kernel: int = Field(ge=1)
    tcn_dilations: tuple[int, ...] = Field(min_length=1)
    segments: int = Field(ge=1)
    lstm_hidden: int = Field(ge=1)
    transformer_layers: int = Field(ge=1)
    transformer_heads: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    modalities: tuple[Literal["V", "A", "T"], ...] = Field(min_length=1)
    fusion: Literal["quality", "average", "concat"]
    # quality fusion's scorer also reads each step's reliability cues (emi.cues: face found, expression confidence,
    # brightness, dark pixels; audio level, speech probability, spectral flatness): it sees that a modality is
    # damaged, not only what it says. Not in the paper (whose scorer sees h_m alone)
    reliability_cues: bool
    # what Stage II reads per modality: the Stage-I projections (aligned), the standardized encoder features
    # (encoder), or both concatenated (the analogue of the paper's Stage-I-tuned encoder output)
    inputs: Literal["aligned", "encoder", "both"]
    temporal: bool = Field(
        True, description="TCN + gated BiLSTM over time (the paper); false: each modality's clip-mean mapped features"
    )
    pearson_loss_weight: float = Field(ge=0)
    ema_decay: float = Field(gt=0, lt=1)
    device: Literal["auto", "cpu", "cuda"]
    ablation_workers: int = Field(ge=1)  # processes training ablation cells side by side
    augment: AugmentParams
    batch_size: int = Field(ge=1)
    weight_decay: float = Field(ge=0)
    schedule: ScheduleParams

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Stage2Params:
        if self.width % self.transformer_heads:
            raise ValueError(f"width {self.width} must be divisible by transformer_heads {self.transformer_heads}")
        return self


class RobustnessParams(Strict):
    """Damage applied to the validation clips for the robustness table (each at its own rate of clips)."""

    rate: float = Field(ge=0, le=1)
    occlusion_box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
    noise_snr_db: float
    mixed_rate: float = Field(ge=0, le=1)  # the mixed condition: this fraction of clips, one random damage each


class EvaluateParams(Strict):
    splits: tuple[Literal["train", "valid", "test"], ...] = Field(min_length=1)
    robustness: RobustnessParams
    ceiling_alpha: float = Field(gt=0)  # ridge penalty of the oracle regressor on the rendered latents
    # Stage-II trainings per ablation cell and robustness model (seed i = seed + i; i = 0 is the stage2 model):
    # the tables show mean +- sd over them
    seeds: int = Field(ge=1)
    # ridge penalties the linear probes choose from by leave-one-out on train (the ablation's linear-probe row,
    # the per-modality probe table of rendered controls)
    probe_alphas: tuple[Annotated[float, Field(gt=0)], ...] = Field(min_length=1)
    # a test clip no prediction reached (unreadable): `mean` submits the mean training label, `drop` leaves its row
    # out; either way the report lists it with the reason, and more than data.max_error_fraction of them fail
    unreadable_test: Literal["mean", "drop"]


class TrackingParams(Strict):
    """MLflow: where runs go (MLFLOW_TRACKING_URI overrides the uri) and when a new model becomes champion."""

    uri: str
    experiment: str
    registered_model: str
    metric: str
    promote: Literal["better", "always", "never"]
    min_delta: float = Field(ge=0)


class DaskParams(Strict):
    address: str | None  # an existing cluster (tcp://host:8786); null starts a LocalCluster
    n_workers: int = Field(ge=1)
    threads_per_worker: int = Field(ge=1)


class OrchestrationParams(Strict):
    """Prefect flow settings: retries for transient failures, where extraction fans out, how long a run waits for
    a busy checkout, whether stages sync with the DVC remote, and which stages run on other work pools."""

    retries: int = Field(ge=0)
    retry_delay_s: float = Field(ge=0)
    extract_fanout: Literal["none", "dask"]
    dask: DaskParams
    lock_wait_s: float = Field(ge=0)
    use_remote: bool
    # stage -> the work pool that runs it (its `emi-stage/<pool>` deployment); a stage not listed runs in the flow's
    # own process. Stages on a pool exchange outputs through the DVC remote, which they then need.
    pools: dict[str, str]
    pool_start_timeout_s: float = Field(gt=0)  # a stage no worker of its pool has started by then fails


class Params(Strict):
    profile: str
    seed: int
    data: DataParams
    download: DownloadParams
    transcribe: TranscribeParams
    extract: ExtractParams
    stage1: Stage1Params
    stage2: Stage2Params
    evaluate: EvaluateParams
    tracking: TrackingParams
    orchestration: OrchestrationParams


# ----------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile's mapping with its ``extends`` chain resolved."""
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; available: {', '.join(available_profiles())}")
    if name in _seen:
        raise ConfigError(f"profile {name!r} extends itself via {' -> '.join(_seen)}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return deep_merge(load_profile(parent, (*_seen, name)), data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.path=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    node: dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def _has_path(data: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc`` (for "did you mean" hints)."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")),
            annotation,
        )
    return list(getattr(current, "model_fields", {}))


def _describe(exc: ValidationError, origins: list[tuple[str, dict[str, Any]]]) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "<top level>"
        origin = next((name for name, layer in reversed(origins) if _has_path(layer, loc)), None)
        where = f"{origin}: " if origin else ""
        if err["type"] == "extra_forbidden":
            known = _known_keys(Params, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?)" if close else ""
            lines.append(f"{where}{dotted}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{where}{dotted}: required key is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"  # a whole section says nothing more
            lines.append(f"{where}{dotted}: {err['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_params(
    path: Path | str | None = DEFAULT_PARAMS,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> Params:
    """Parse ``params.yaml`` (optional) over its profile, plus dotted overrides, into ``Params``."""
    user: dict[str, Any] = {}
    user_name = "params"
    if path is not None:
        path = Path(path)
        user_name = str(path)
        user = _read_yaml(path)
    override_layer: dict[str, Any] = {}
    for item in overrides:
        override_layer = deep_merge(override_layer, parse_override(item))
    user = inherit_nulls(user)  # null in params.yaml: the profile's value (every key is listed, for `dvc exp run -S`)
    chosen = profile or override_layer.get("profile") or user.get("profile") or "embedded"
    if not isinstance(chosen, str):
        raise ConfigError(f"{user_name}: profile must be a profile name, got {chosen!r}")
    base = load_profile(chosen)
    merged = deep_merge(deep_merge(base, user), override_layer)
    merged["profile"] = chosen
    origins = [
        (f"profile {chosen!r} ({PROFILES_DIR / (chosen + '.yaml')})", base),
        (user_name, user),
        ("--set override", override_layer),
    ]
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None


def inherit_nulls(layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` without its null leaves (and the sections left empty): in params.yaml a null means "the profile's
    value". params.yaml lists every key, so that DVC's plain ``dvc exp run -S stage2.width=64`` finds the key it
    sets (Hydra refuses to set a key the file does not hold); a deliberate null over a profile's value goes through
    ``--set`` instead."""
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if isinstance(value, dict):
            inner = inherit_nulls(value)
            if inner or not value:
                out[key] = inner
        elif value is not None:
            out[key] = value
    return out


def params_template(model: type[BaseModel] = None) -> dict[str, Any]:  # type: ignore[assignment]
    """Every key of the configuration with a null value (nested as the sections are), for params.yaml."""
    model = model or Params
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        out[name] = params_template(kind) if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return out


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of the config (for tracking and fingerprints)."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
