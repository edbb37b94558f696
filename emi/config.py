"""Typed configuration, parsed once: ``params.yaml`` holds every value a run uses (``emi params use PROFILE``
writes it from a named profile, ``emi/profiles/<name>.yaml``, which may ``extend`` another); ``--set key.path=value``
overrides a value for one command. The mapping is validated into frozen pydantic models whose field descriptions
are params.yaml's comments; unknown keys and wrong types are errors that name the key, the file it came from and,
for typos, the closest known key.
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
DAMAGE_KINDS: tuple[str, ...] = ("occluded_face", "noisy_audio", "missing_audio", "missing_text")
"""The damage kinds of corruption-aware training and of the robustness conditions (``emi.features.damage`` says
what each does); a muted track is missing audio to this pipeline, which masks a track below ``data.silence_dbfs``."""
SIGNIFICANT_SD = 2.0
"""Reports mark a difference between two variants when its mean over training seeds exceeds this many standard
deviations of the paired per-seed difference (with 60 validation clips a 0.01 gap can be noise)."""
PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_PROFILE = "embedded"


class ConfigError(ValueError):
    """A params file or override that cannot be turned into a valid configuration."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- download
class CorruptionParams(Strict):
    """Share of generated clips that get each corruption (a clip gets at most one)."""

    occlusion: float = Field(ge=0, le=1, description="share of clips with an object over the lower face")
    heavy_noise: float = Field(ge=0, le=1, description="share of clips mixed with noise at heavy_noise_snr_db")
    muted_audio: float = Field(ge=0, le=1, description="share of clips whose audio track is silent")
    missing_audio: float = Field(ge=0, le=1, description="share of clips without an audio track")

    @model_validator(mode="after")
    def _total_at_most_one(self) -> CorruptionParams:
        total = self.occlusion + self.heavy_noise + self.muted_audio + self.missing_audio
        if total > 1:
            raise ValueError(f"corruption fractions add up to {total:.3f} > 1")
        return self


class SplitFractions(Strict):
    """How the generated clips are split (fractions adding up to 1)."""

    train: float = Field(gt=0, le=1, description="share of clips in the training split")
    valid: float = Field(gt=0, le=1, description="share of clips in the validation split")
    test: float = Field(ge=0, le=1, description="share of clips in the test split")

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
    """The embedded "vidmimic-synth" generator (docs/data.md)."""

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
    """A Hume-Vidmimic2 folder on this machine (the source is only read)."""

    path: Path | None = Field(default=None, description="the folder holding raw/<id>.mp4 and *_split.csv")
    mode: Literal["copy", "symlink"] = Field(default="copy", description="copy | symlink the clips into data/raw")


class UrlParams(Strict):
    """An archive of the dataset, downloaded resumably and checked."""

    url: str | None = Field(default=None, description="http(s):// or file:// archive (.zip, .tar, .tar.gz)")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", description="the archive's sha256")
    cache_dir: Path = Field(default=Path("data/cache"), description="where the archive is downloaded to")
    timeout_s: float = Field(default=60, gt=0, description="network timeout per request (s)")
    retries: int = Field(default=3, ge=0, description="retries of a failed download")


class TestClipsParams(Strict):
    """Where the test clips come from. ``auto``: ``test_split.csv`` when the dataset has one, else the clips in
    ``raw/`` that no split file lists (the ABAW release); ``folder``: the clips of ``folder``, brought into ``raw/``;
    ``none``: no test set. download writes the result as ``test_split.csv`` (ids only when unlabelled)."""

    clips: Literal["auto", "split", "unlisted", "folder", "none"] = Field(
        default="auto", description="auto | split | unlisted | folder | none (auto: test_split.csv, else unlisted)")
    folder: Path | None = Field(default=None, description="clips: folder -> a folder of test videos")

    @model_validator(mode="after")
    def _folder(self) -> TestClipsParams:
        if self.clips == "folder" and self.folder is None:
            raise ValueError("download.test.clips is 'folder' but download.test.folder is not set")
        return self


class DownloadParams(Strict):
    """Where the dataset comes from: generated, a local copy, or an archive."""

    source: Literal["synthetic", "local", "url"] = Field(description="synthetic | local | url")
    synthetic: SyntheticParams = Field(description="the embedded generator (source: synthetic)")
    local: LocalParams = Field(default=LocalParams(), description="a local copy (source: local)")
    url: UrlParams = Field(default=UrlParams(), description="an archive (source: url)")
    test: TestClipsParams = Field(default=TestClipsParams(), description="where the test clips come from")
    workers: int = Field(ge=1, description="processes rendering synthetic clips (the bytes do not depend on it)")


class DataParams(Strict):
    """What every stage that reads clips shares: the clip contract and the error tolerance."""

    max_error_fraction: float = Field(ge=0, le=1, description="fail when more than this fraction of clips has a "
                                                              "problem")
    min_duration_s: float = Field(gt=0, description="shorter clips are refused (one 5 fps step)")
    max_duration_s: float = Field(gt=0, description="longer clips are flagged (never refused) and featurized on "
                                                    "extract.max_steps steps")
    silence_dbfs: float = Field(description="an audio track quieter than this (RMS, dBFS) counts as missing audio")

    @model_validator(mode="after")
    def _durations(self) -> DataParams:
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s {self.min_duration_s} > max_duration_s {self.max_duration_s}")
        return self


# ----------------------------------------------------------------------------- encoders, transcribe, extract
class EncoderSpec(Strict):
    """An encoder: a hub id or a local path, and whether random init is explicitly allowed."""

    kind: str = Field(description="encoder family (faster-whisper, fer, open_clip, whisper-encoder, wav2vec2, bert)")
    name: str = Field(description="model name or hub id")
    pretrained: str | None = Field(default=None, description="pretrained tag (open_clip), or 'random'")
    path: Path | None = Field(default=None, description="a local copy of the weights; wins over hub and package")
    allow_random_init: bool = Field(default=False, description="random weights when none resolve (reports say so)")
    dim: int = Field(ge=1, description="feature width the encoder outputs")
    pool_grid: int | None = Field(default=None, ge=1, description="CNN encoders: grid of pooled feature maps")
    window_s: float | None = Field(default=None, gt=0, description="audio encoders: seconds encoded at once")


class TranscribeParams(Strict):
    """Speech to text with faster-whisper."""

    asr: EncoderSpec = Field(description="the ASR model")
    language: str = Field(description="spoken language")
    beam_size: int = Field(ge=1, description="beam search width")
    vad: bool = Field(description="skip non-speech with Silero VAD")
    device: Literal["auto", "cpu", "cuda"] = Field(description="auto | cpu | cuda")
    compute_type: str = Field(description="CTranslate2 compute type (int8 on CPU, float16 on GPU)")
    shard_size: int = Field(ge=1, description="clips per resumable part")
    workers: int = Field(ge=1, description="clips transcribed concurrently; CPU threads are split among them")
    batch_size: int = Field(ge=1, description="speech windows of several clips decoded as one batch (faster-whisper's "
                                              "batched pipeline; 1: each clip on its own, workers at a time)")
    # above 0 whisper samples, from an unseeded per-thread RNG, so transcripts would change from run to run
    temperatures: list[Annotated[float, Field(ge=0)]] = Field(
        min_length=1, description="decoding temperatures ([0.0]: no sampling fallback, reproducible)")
    compression_ratio_threshold: float = Field(
        gt=0, description="a window whose text gzip-compresses more than this is a loop: decoded again with the guard")
    no_repeat_ngram_size: int = Field(
        ge=0, description="repetition guard: no token n-gram of this size twice in a window (0: off)")
    repetition_penalty: float = Field(
        ge=1, description="repetition guard: score penalty on tokens already in the window (1: off)")

    @model_validator(mode="after")
    def _batched_has_one_temperature(self) -> TranscribeParams:
        if self.batch_size > 1 and len(self.temperatures) > 1:
            raise ValueError(f"transcribe.batch_size {self.batch_size} decodes at one temperature (faster-whisper's "
                             f"batched pipeline has no fallback) but temperatures is {self.temperatures}: set "
                             "temperatures to one value or batch_size to 1")
        return self


class ExtractParams(Strict):
    """Per-step visual and audio features on the fps grid, one text vector per clip."""

    fps: float = Field(gt=0, description="steps per second of the feature grid")
    face_crop: bool = Field(description="crop the largest face per frame (OpenCV's Haar detector)")
    visual: EncoderSpec = Field(description="the visual encoder")
    audio: EncoderSpec = Field(description="the audio encoder")
    text: EncoderSpec = Field(description="the text encoder")
    device: Literal["auto", "cpu", "cuda"] = Field(description="auto | cpu | cuda")
    dtype: Literal["fp32", "fp16", "bf16"] = Field(description="encoder dtype on a GPU (fp32 on CPU)")
    batch_size: int = Field(ge=1, description="frames / audio windows per encoder call")
    decode_workers: int = Field(ge=0, description="workers decoding clips: threads in extract and evaluate, loader "
                                                  "processes in Stage I's fine-tuning (no output depends on it)")
    keep_decoded: tuple[Literal["train", "valid", "test"], ...] = Field(
        default=("valid",), description="splits whose clips extract keeps decoded (frames as lossless PNG, "
                                        "waveforms) for Stage I's fine-tuning (train, valid) and evaluate's "
                                        "robustness (valid), which then decode nothing; docs/gpu.md has the disk")
    shard_size: int = Field(ge=1, description="clips per feature shard (the unit of resume)")
    frame_max_side: int = Field(ge=16, description="frames are downscaled to this side at decode")
    max_steps: int = Field(ge=1, description="steps per clip at most, spread uniformly over a longer clip")
    visual_source: Literal["frames", "face_images"] = Field(
        description="frames | face_images (the organisers' crops in <dataset>/face_images/<id>/)")
    face_margin: float = Field(ge=0, description="face_crop: the box grown by this fraction on each side")


# ----------------------------------------------------------------------------- training
class ScheduleParams(Strict):
    """SGDR (cosine annealing with warm restarts), paper section 4.3."""

    lr_max: float = Field(gt=0, description="peak learning rate of each cycle")
    lr_min: float = Field(ge=0, description="learning rate at the end of each cycle")
    cycle_epochs: int = Field(ge=1, description="epochs per cycle (T_i)")
    epochs: int = Field(ge=1, description="training epochs")


class Stage2ScheduleParams(ScheduleParams):
    """SGDR for Stage II, its length in epochs (the paper) or in optimizer steps: a length in steps gives every data
    size the same number of updates (and the EMA, which averages per step, the same window), where a length in
    epochs gives a small dataset few updates and a large one many."""

    cycle_epochs: int | None = Field(default=None, ge=1, description="epochs per cycle (T_i), with epochs")
    epochs: int | None = Field(default=None, ge=1, description="training epochs (null: steps sets the length)")
    steps: int | None = Field(default=None, ge=1, description="training length in optimizer steps, the last epoch "
                                                             "cut short (null: epochs sets it)")
    cycle_steps: int | None = Field(default=None, ge=1, description="optimizer steps per cycle (T_i), with steps")

    @model_validator(mode="after")
    def _one_length(self) -> Stage2ScheduleParams:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("set one of schedule.epochs and schedule.steps (the other null)")
        if self.epochs is not None and (self.cycle_epochs is None or self.cycle_steps is not None):
            raise ValueError("schedule.epochs goes with cycle_epochs (and cycle_steps null)")
        if self.steps is not None and (self.cycle_steps is None or self.cycle_epochs is not None):
            raise ValueError("schedule.steps goes with cycle_steps (and cycle_epochs null)")
        return self

    @property
    def per_step(self) -> bool:
        """Whether the length and the cycles count optimizer steps (the scheduler steps after each of them)."""
        return self.steps is not None

    def epochs_for(self, batches_per_epoch: int) -> int:
        """Epochs a training runs over data of ``batches_per_epoch`` batches (the last one cut short with steps)."""
        return self.epochs if self.steps is None else -(-self.steps // max(1, batches_per_epoch))

    def as_epochs(self, epochs: int) -> Stage2ScheduleParams:
        """This schedule over ``epochs`` epochs (cycles of the same share of the training), e.g. for a benchmark."""
        cycle = self.cycle_epochs if self.steps is None else max(1, round(epochs * self.cycle_steps / self.steps))
        return self.model_copy(update={"epochs": epochs, "cycle_epochs": cycle, "steps": None, "cycle_steps": None})


class FinetuneParams(Strict):
    """Stage I end to end: the last k blocks of the visual/audio encoders trained with the heads, from frames and
    waveforms (paper section 3.3). k = 0 trains the heads alone over the cached features."""

    last_k_blocks: int = Field(ge=0, description="encoder blocks trained with the heads (0: heads only)")
    modalities: tuple[Literal["visual", "audio"], ...] = Field(min_length=1, description="encoders fine-tuned")
    lr: float = Field(gt=0, description="peak learning rate of the encoder blocks (the heads use schedule.lr_max)")
    frames_per_clip: int = Field(ge=1, description="frames sampled per clip per step (memory knob)")
    audio_seconds: float = Field(gt=0, description="waveform crop per clip per step (s)")


class Stage1Params(Strict):
    """Stage I: vision-text and audio-text contrastive alignment."""

    embed_dim: int = Field(ge=1, description="width of the shared embedding")
    temperature_init: float = Field(gt=0, description="initial InfoNCE temperature (learned)")
    finetune: FinetuneParams = Field(description="end-to-end tuning of the last encoder blocks")
    batch_size: int = Field(ge=2, description="clips per batch (InfoNCE negatives)")
    weight_decay: float = Field(ge=0, description="AdamW weight decay")
    schedule: ScheduleParams = Field(description="SGDR schedule")


class AugmentParams(Strict):
    """Corruption-aware Stage II training: one damaged copy of a share of the training clips (made once by the
    ``augment`` stage, through the one featurize path) and modality dropout per clip in every training batch."""

    fraction: float = Field(ge=0, le=1, description="share of training clips that get one damaged copy (0: none)")
    kinds: tuple[Literal[DAMAGE_KINDS], ...] = Field(min_length=1, description="damages a copy draws from")
    occlusion_box: tuple[float, float, float, float] = Field(
        description="occluded_face: box x0, y0, x1, y1 as fractions of the frame")
    noise_snr_db: tuple[float, float] = Field(description="noisy_audio: SNR drawn from [low, high] (dB)")
    modality_dropout: float = Field(ge=0, lt=1, description="per clip and modality in each training batch")

    @model_validator(mode="after")
    def _snr_range(self) -> AugmentParams:
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"noise_snr_db {list(self.noise_snr_db)} must be [low, high]")
        return self


class Stage2Params(Strict):
    """Stage II: temporal blocks, quality-aware fusion and the Transformer over the frozen Stage-I features."""

    width: int = Field(ge=1, description="shared width W of the mapped modalities")
    tcn_kernel: int = Field(ge=1, description="TCN kernel size")
    tcn_dilations: tuple[int, ...] = Field(min_length=1, description="dilation of each TCN block")
    segments: int = Field(ge=1, description="M segments of the segment-wise average pooling (eq. 5)")
    lstm_hidden: int = Field(ge=1, description="hidden units per direction of the audio BiLSTM")
    transformer_layers: int = Field(ge=1, description="Transformer encoder layers")
    transformer_heads: int = Field(ge=1, description="attention heads (must divide width)")
    dropout: float = Field(ge=0, lt=1, description="dropout in the mapping MLPs, TCN and Transformer")
    modalities: tuple[Literal["V", "A", "T"], ...] = Field(min_length=1, description="modalities the model reads")
    fusion: Literal["quality", "average", "concat", "gated"] = Field(
        description="quality (the paper's weighted sum) | average | concat | gated (quality-gated concatenation)")
    reliability_cues: bool = Field(description="the quality scorer also reads per-step damage cues (not in the paper)")
    inputs: Literal["aligned", "encoder", "both"] = Field(
        description="Stage-I projections | standardized encoder features | both concatenated")
    temporal: bool = Field(
        description="TCN + gated BiLSTM over time (the paper) | false: each modality's clip-mean mapped features")
    pearson_loss_weight: float = Field(ge=0, description="loss = MSE + this x (1 - Pearson) (0: the paper's MSE)")
    ema_decay: float = Field(gt=0, lt=1, description="EMA of the weights (validated and saved)")
    device: Literal["auto", "cpu", "cuda"] = Field(description="auto | cpu | cuda (CPU runs are bit-reproducible)")
    ablation_workers: int = Field(ge=1, description="processes training ablation cells side by side (each gets "
                                                    "cores / workers threads)")
    augment: AugmentParams = Field(description="corruption-aware training (not in the paper)")
    batch_size: int = Field(ge=1, description="clips per batch")
    batch_pool: int = Field(ge=1, description="batches drawn from pools of this many, each sorted by length "
                                              "(less padding; 1: plain random batches)")
    validate_every: int = Field(ge=1, description="epochs between validations of the EMA weights (the last one "
                                                  "always)")
    cache_mb: float = Field(ge=0, description="a training run holds its clips in memory up to this size (else "
                                              "reads them per batch)")
    weight_decay: float = Field(ge=0, description="AdamW weight decay")
    schedule: Stage2ScheduleParams = Field(description="SGDR schedule, its length in epochs or optimizer steps")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Stage2Params:
        if self.width % self.transformer_heads:
            raise ValueError(f"width {self.width} must be divisible by transformer_heads {self.transformer_heads}")
        return self


# ----------------------------------------------------------------------------- evaluation, tracking, orchestration
class RobustnessParams(Strict):
    """Damage applied to the validation clips for the robustness table (each at its own rate of clips)."""

    rate: float = Field(ge=0, le=1, description="share of validation clips damaged in each single-damage condition")
    occlusion_box: tuple[float, float, float, float] = Field(
        description="occluded face: box x0, y0, x1, y1 as fractions of the frame")
    noise_snr_db: float = Field(description="noisy audio: SNR (dB)")
    mixed_rate: float = Field(ge=0, le=1, description="the mixed condition: share of clips, one random damage each")


class EvaluateParams(Strict):
    """What evaluate scores and how the evidence over seeds is gathered."""

    splits: tuple[Literal["train", "valid", "test"], ...] = Field(min_length=1, description="splits scored")
    robustness: RobustnessParams = Field(description="the robustness conditions")
    ceiling_alpha: float = Field(gt=0, description="ridge penalty of the oracle on the rendered controls")
    seeds: int = Field(ge=1, description="Stage-II trainings per ablation cell (seed + i); tables show mean +- sd")
    probe_alphas: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        min_length=1, description="ridge penalties the linear probes choose from (leave-one-out on train)")
    unreadable_test: Literal["mean", "drop"] = Field(
        description="a test clip without a prediction: mean training label | no row")


class TrackingParams(Strict):
    """MLflow: where runs go (MLFLOW_TRACKING_URI overrides the uri) and when a new model becomes champion."""

    uri: str = Field(description="MLflow tracking store")
    experiment: str = Field(description="MLflow experiment")
    registered_model: str = Field(description="name in the model registry")
    metric: str = Field(description="what 'better' means for promotion to champion")
    promote: Literal["better", "always", "never"] = Field(description="better | always | never")
    min_delta: float = Field(ge=0, description="promote when the metric beats the champion's by more than this")
    # a default: the params.json of a model registered before the key existed still loads (emi predict)
    floor: Literal["probe"] | float | None = Field(
        default="probe", description="champion only above this valid mean Pearson: probe (the run's own linear "
                                     "probe) | a number | null (none)")


class DaskParams(Strict):
    """The Dask cluster extraction fans out on."""

    address: str | None = Field(description="an existing cluster (tcp://host:8786); null starts a LocalCluster")
    n_workers: int = Field(ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(ge=1, description="LocalCluster threads per worker")


class OrchestrationParams(Strict):
    """Prefect flow settings: retries for transient failures, where extraction fans out, how long a run waits for
    a busy checkout, whether stages sync with the DVC remote, and which stages run on other work pools."""

    retries: int = Field(ge=0, description="retries per stage task (transient failures)")
    retry_delay_s: float = Field(ge=0, description="seconds between retries")
    extract_fanout: Literal["none", "dask"] = Field(description="none | dask: extraction shards as Dask tasks")
    dask: DaskParams = Field(description="the Dask cluster")
    lock_wait_s: float = Field(ge=0, description="a second run on the same checkout waits this long")
    use_remote: bool = Field(description="restore stages from the default DVC remote and push what ran")
    pools: dict[str, str] = Field(description="stage -> work pool that runs it ({}: all in the flow's process)")
    pool_start_timeout_s: float = Field(gt=0, description="a pooled stage no worker starts within this fails")


class Params(Strict):
    """Everything a run reads."""

    profile: str = Field(description="the profile these values were written from (provenance only)")
    seed: int = Field(description="the seed every random stream derives from")
    data: DataParams = Field(description="the clip contract every stage shares")
    download: DownloadParams = Field(description="download: the dataset in the Hume-Vidmimic2 layout")
    transcribe: TranscribeParams = Field(description="transcribe: speech to text")
    extract: ExtractParams = Field(description="extract: encoder features")
    stage1: Stage1Params = Field(description="stage1: contrastive alignment")
    stage2: Stage2Params = Field(description="stage2: the fusion network (also ablate and augment)")
    evaluate: EvaluateParams = Field(description="evaluate and ablate: scores, robustness, seeds")
    tracking: TrackingParams = Field(description="MLflow tracking and the model registry")
    orchestration: OrchestrationParams = Field(description="the Prefect flow")


UNTRACKED: frozenset[str] = frozenset({
    "profile", "download.workers", "extract.decode_workers", "extract.keep_decoded", "stage2.cache_mb", "tracking",
    "orchestration"})
"""Keys (or sections) that cannot change an output: the profile the values came from, how many processes do the
same work, where MLflow logs, how Prefect schedules. dvc.yaml does not track them, so changing one reruns nothing.
(transcribe.workers and stage2.ablation_workers are tracked: they split the CPU threads among the workers, and float
kernels round differently by thread count.)"""


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
    if key.strip() == "profile":
        raise ConfigError("profile is where params.yaml's values came from, not a value to set: pass --profile NAME, "
                          "or write another profile's values with `emi params use NAME`")
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


def _describe(exc: ValidationError, origins: list[tuple[str, dict[str, Any]]], hint: str) -> str:
    lines = []
    missing = False
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "<top level>"
        origin = next((name for name, layer in reversed(origins) if _has_path(layer, loc)), origins[0][0])
        where = f"{origin}: " if origin else ""
        if err["type"] == "extra_forbidden":
            known = _known_keys(Params, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            suggestion = f" (did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?)" if close else ""
            lines.append(f"{where}{dotted}: unknown key{suggestion}")
        elif err["type"] == "missing":
            missing = True
            lines.append(f"{where}{dotted}: required key is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"  # a whole section says nothing more
            lines.append(f"{where}{dotted}: {err['msg']}{shown}")
    if missing and hint:
        lines.append(hint)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_params(
    path: Path | str | None = DEFAULT_PARAMS,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> Params:
    """The configuration a run uses, parsed once into ``Params``: the values of ``params.yaml`` (every key:
    ``emi params use`` writes the file), or with ``profile`` (or no path) the named profile's values; then
    ``key.path=value`` overrides. Errors name the key, the file it came from and, for typos, the closest key."""
    override_layer: dict[str, Any] = {}
    for item in overrides:
        override_layer = deep_merge(override_layer, parse_override(item))
    if profile is not None or path is None:
        name = profile or DEFAULT_PROFILE
        base, origin = load_profile(name) | {"profile": name}, f"profile {name!r} ({PROFILES_DIR / (name + '.yaml')})"
        hint = ""
    else:
        base, origin = _read_yaml(Path(path)), str(path)
        hint = (f"{path} lacks keys a run reads: write the complete file with `emi params use "
                f"{base.get('profile', DEFAULT_PROFILE)}` (your values: --set key=value)")
    merged = deep_merge(base, override_layer)
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, [(origin, base), ("--set override", override_layer)], hint)) from None


def leaf_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration, in the order params.yaml lists them."""
    out: list[str] = []
    for name, field in (model or Params).model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += leaf_keys(kind, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
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
