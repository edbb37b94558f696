"""The dual-stage EMI network (paper sections 3.3-3.6), one block per equation.

Stage I  : ``AlignmentModel`` - projection heads + symmetric InfoNCE for vision<->text and audio<->text (eq. 1).
Stage II : ``EMIFusionModel`` - TCN + segment pooling (eqs. 2, 5), gated BiLSTM (eqs. 3, 6), mapping MLPs (eq. 4),
           quality-aware fusion (eqs. 7-8), Transformer encoder and sigmoid heads (eq. 9); optionally the quality
           scorer also sees each step's reliability cues (``stage2.reliability_cues``, not in the paper).

Shapes: B clips, T timesteps (5 fps grid, padded at the end), D features, M selected modalities, W width.
Masks are bool, True = real / usable. Modalities are always ordered V, A, T.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emi.config import MODALITY_KEYS

if TYPE_CHECKING:
    from emi.config import Stage1Params, Stage2Params

MODALITIES: tuple[str, ...] = tuple(MODALITY_KEYS.values())  # V, A, T
FUSIONS: tuple[str, ...] = ("quality", "average", "concat", "gated")


# ----------------------------------------------------------------------------- helpers
def zero_padding(x: Tensor, time_mask: Tensor) -> Tensor:
    # masked_fill rather than a multiply: padding may hold NaN and NaN * 0 is still NaN
    return x.masked_fill(~time_mask.unsqueeze(-1), 0.0)


def clip_pool(x: Tensor, time_mask: Tensor) -> Tensor:
    """Masked mean over time: (B, T, D) -> (B, D); a clip with no valid step pools to 0."""
    count = time_mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)
    return zero_padding(x, time_mask).sum(1) / count


def sinusoidal_positions(length: int, dim: int, base: float = 10_000.0, device=None) -> Tensor:
    # computed on the fly, so clips of any length work (a learned table would cap T)
    pos = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


# ----------------------------------------------------------------------------- Stage I (section 3.3)
def info_nce(x: Tensor, y: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE (eq. 1) over the batch: pair i is (x_i, y_i), every other y_j is a negative."""
    if x.shape[0] == 0:
        return (x.sum() + y.sum()) * 0.0  # no pairs: contributes nothing but keeps backward() valid
    logits = logit_scale * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ProjectionHead(nn.Module):
    """Encoder features -> shared embedding; works per vector or per timestep (any leading dims)."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)
        self.fc = nn.Linear(embed_dim, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(x)
        return self.norm(z + self.drop(self.fc(F.gelu(z))))


class AlignmentModel(nn.Module):
    """CLIP/CLAP-style alignment of vision and audio to text: L = L_v2t + L_a2t (section 3.6)."""

    def __init__(
        self,
        dims: dict[str, int],
        embed_dim: int,
        temperature_init: float,
        dropout: float = 0.0,
        max_logit_scale: float = 100.0,
    ):
        super().__init__()
        missing = [m for m in MODALITIES if m not in dims]
        if missing:
            raise ValueError(f"AlignmentModel needs feature dims for V, A and T; missing {missing}")
        self.heads = nn.ModuleDict({m: ProjectionHead(dims[m], embed_dim, dropout) for m in MODALITIES})
        # learn log(1/tau) like CLIP: positive by construction and well-conditioned for the optimiser
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        self.max_logit_scale = max_logit_scale

    @classmethod
    def from_params(cls, p: Stage1Params, dims: dict[str, int]) -> AlignmentModel:
        return cls(dims, embed_dim=p.embed_dim, temperature_init=p.temperature_init)

    @property
    def logit_scale(self) -> Tensor:
        # CLIP's cap: beyond 1/tau = 100 training becomes unstable
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def project(self, modality: str, x: Tensor) -> Tensor:
        """Stage-I head of one modality on (B, D) vectors or (B, T, D) sequences."""
        return self.heads[modality](x)

    def forward(
        self,
        v_clip: Tensor,
        a_clip: Tensor,
        t_vec: Tensor,
        pair_mask: Tensor | None = None,
        vt_mask: Tensor | None = None,
        at_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Clip vectors (N, D_m) -> losses; ``pair_mask`` drops clips from both terms, ``vt/at_mask`` from one."""
        keep_all = torch.ones(t_vec.shape[0], dtype=torch.bool, device=t_vec.device)
        base = keep_all if pair_mask is None else pair_mask
        vt = base if vt_mask is None else base & vt_mask
        at = base if at_mask is None else base & at_mask
        zt = self.project("T", t_vec)
        scale = self.logit_scale
        loss_vt = info_nce(self.project("V", v_clip)[vt], zt[vt], scale)
        loss_at = info_nce(self.project("A", a_clip)[at], zt[at], scale)
        return {"loss": loss_vt + loss_at, "loss_vt": loss_vt, "loss_at": loss_at, "logit_scale": scale.detach()}


# ----------------------------------------------------------------------------- Stage II: visual (eqs. 2, 5)
class TemporalBlock(nn.Module):
    """One dilated, non-causal residual conv; the clip keeps its length ('same' padding)."""

    def __init__(self, width: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, dilation=dilation, padding="same")
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, time_mask: Tensor) -> Tensor:
        # zero the padding before every conv so a clip's edge sees the same zeros however much padding follows
        y = self.conv(zero_padding(x, time_mask).transpose(1, 2)).transpose(1, 2)
        return zero_padding(self.norm(x + self.drop(F.gelu(y))), time_mask)


class TemporalConvNet(nn.Module):
    """h_v^t = TCN(f_v^t; {W_k^{d_k}}) - stacked dilated convs for multi-scale temporal context (eq. 2)."""

    def __init__(self, in_dim: int, width: int, kernel: int, dilations: tuple[int, ...], dropout: float):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(TemporalBlock(width, kernel, d, dropout) for d in dilations)

    def forward(self, x: Tensor, time_mask: Tensor) -> Tensor:
        h = zero_padding(self.inp(zero_padding(x, time_mask)), time_mask)
        for block in self.blocks:
            h = block(h, time_mask)
        return h


def segment_mean_pool(x: Tensor, time_mask: Tensor, segments: int) -> Tensor:
    """Eq. 5: split each clip's valid length L into M contiguous segments (step t goes to floor(t*M/L)),
    replace every step by its segment's mean. Same shape as x, padding 0; with L < M each step is its own segment."""
    B, T, _ = x.shape
    length = time_mask.sum(1, keepdim=True).clamp(min=1)
    seg = (torch.arange(T, device=x.device).unsqueeze(0) * segments) // length
    member = F.one_hot(seg.clamp(max=segments - 1), segments).to(x.dtype) * time_mask.unsqueeze(-1)  # (B,T,M)
    sums = member.transpose(1, 2) @ zero_padding(x, time_mask)  # (B, M, D)
    means = sums / member.sum(1).clamp(min=1).unsqueeze(-1)
    return member @ means


# ----------------------------------------------------------------------------- Stage II: audio (eqs. 3, 6)
class GatedBiLSTM(nn.Module):
    """h_a^t = BiLSTM(f_a^t) (eq. 3); alpha^t = sigma(W_g[h^t; h^t - h^{t-1}]) (eq. 6); returns (alpha*h, alpha)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden  # forward and backward states
        self.gate = nn.Linear(2 * self.out_dim, self.out_dim)

    def forward(self, x: Tensor, time_mask: Tensor) -> tuple[Tensor, Tensor]:
        # packing keeps the backward direction from starting inside the padding
        lengths = time_mask.sum(1).clamp(min=1).cpu()
        # cuDNN wants the weights in one flat buffer; a copy of the module (the EMA model, a reloaded one) is not,
        # and cuDNN would then compact them on every call. A no-op on CPU and when they are flat already.
        self.lstm.flatten_parameters()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        delta = torch.cat([torch.zeros_like(h[:, :1]), h[:, 1:] - h[:, :-1]], dim=1)  # delta h^0 = 0
        alpha = torch.sigmoid(self.gate(torch.cat([h, delta], dim=-1)))
        return zero_padding(alpha * h, time_mask), zero_padding(alpha, time_mask)


# ----------------------------------------------------------------------------- Stage II: fusion (eqs. 4, 7, 8)
def mapping_mlp(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    """The modality mapping layer of eq. 4: every modality lands in the same W-wide space."""
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width), nn.LayerNorm(width)
    )


class QualityFusion(nn.Module):
    """beta^t = softmax_m(q_m^t), q_m = MLP_m(h_m) (eqs. 7-8); fused^t = sum_m beta_m^t h_m^t.

    With reliability cues (``cue_dims``: cues per modality, 0 for none), q_m = MLP_m([h_m; c_m]): the scorer sees
    evidence that a modality is damaged (a covered face, noise), not only what it says.
    Unavailable modalities get q = -inf, so their weight is exactly 0. A step with nothing available (all
    modalities missing, or padding) gets all-zero weights and a zero fused vector instead of NaN.
    ``average`` uses beta = 1/k over the k available modalities; ``concat`` feeds [h_V; h_A; h_T] (missing
    ones zeroed) to a Linear and reports the 1/k weights only for logging. ``gated`` (quality-gated
    concatenation, not in the paper) scores like ``quality`` but keeps each modality's features apart:
    Linear([M beta_V h_V; M beta_A h_A; M beta_T h_T]), so what a modality carries alone is not averaged away,
    and a low-quality modality is still scaled down (M: the number of modalities, so uniform weights give concat).
    """

    def __init__(self, width: int, n_modalities: int, mode: str = "quality", cue_dims: tuple[int, ...] | None = None):
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {mode!r}")
        self.mode = mode
        self.cue_dims = tuple(cue_dims) if cue_dims is not None else (0,) * n_modalities
        if len(self.cue_dims) != n_modalities:
            raise ValueError(f"cue_dims {self.cue_dims} must give one width per modality ({n_modalities})")
        if mode in ("quality", "gated"):
            self.scorers = nn.ModuleList(
                nn.Sequential(nn.Linear(width + c, width), nn.GELU(), nn.Linear(width, 1)) for c in self.cue_dims
            )
        if mode in ("concat", "gated"):
            self.merge = nn.Linear(n_modalities * width, width)

    def forward(self, h: Tensor, available: Tensor, cues: list[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
        """h (B, T, M, W), available (B, T, M), cues per modality (B, T, C_m) or None -> fused (B, T, W),
        weights (B, T, M)."""
        h = h.masked_fill(~available.unsqueeze(-1), 0.0)  # a missing modality's features never reach the output
        uniform = available.to(h.dtype) / available.sum(-1, keepdim=True).clamp(min=1)
        if self.mode == "concat":
            return self.merge(h.flatten(-2)), uniform
        if self.mode == "average":
            return (uniform.unsqueeze(-1) * h).sum(-2), uniform
        q = torch.cat([score(self._scorer_input(h, available, cues, i)) for i, score in enumerate(self.scorers)],
                      dim=-1)
        q = q.masked_fill(~available, float("-inf"))
        nothing = ~available.any(-1, keepdim=True)
        weights = torch.softmax(q.masked_fill(nothing, 0.0), dim=-1).masked_fill(~available, 0.0)
        if self.mode == "gated":
            return self.merge((h.shape[-2] * weights.unsqueeze(-1) * h).flatten(-2)), weights
        return (weights.unsqueeze(-1) * h).sum(-2), weights

    def _scorer_input(self, h: Tensor, available: Tensor, cues: list[Tensor | None] | None, i: int) -> Tensor:
        if not self.cue_dims[i]:
            return h[..., i, :]
        if cues is None or cues[i] is None:
            raise ValueError("this quality fusion scores with reliability cues (stage2.reliability_cues) but got "
                             "none: the features were stored without cues (run `emi extract` again)")
        c = cues[i].to(h.dtype).masked_fill(~available[..., i:i + 1], 0.0)
        return torch.cat([h[..., i, :], c], dim=-1)


# ----------------------------------------------------------------------------- Stage II: the model (eq. 9)
class EMIFusionModel(nn.Module):
    """y^t = sigmoid(Transformer(sum_m beta_m^t h_m^t)) per step, pooled over the clip's valid steps.

    Inputs are the frozen Stage-I aligned features: v (B,T,Dv), a (B,T,Da) on the 5 fps grid and one text
    vector t (B,Dt); a modality outside ``modalities`` is never read and may be None.
    """

    def __init__(
        self,
        dims: dict[str, int],
        modalities: tuple[str, ...],
        fusion: str,
        width: int,
        tcn_kernel: int,
        tcn_dilations: tuple[int, ...],
        segments: int,
        lstm_hidden: int,
        transformer_layers: int,
        transformer_heads: int,
        dropout: float,
        n_outputs: int = 6,
        ff_mult: int = 4,
        cue_dims: dict[str, int] | None = None,
        temporal: bool = True,
    ):
        super().__init__()
        unknown = set(modalities) - set(MODALITIES)
        if not modalities or unknown:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities!r}")
        if width % transformer_heads:
            raise ValueError(f"width {width} must be divisible by transformer_heads {transformer_heads}")
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.segments = segments
        self.temporal = temporal
        mapped_from = {}
        if "V" in self.modalities:
            mapped_from["V"] = dims["V"]
            if temporal:
                self.tcn = TemporalConvNet(dims["V"], width, tcn_kernel, tcn_dilations, dropout)
                mapped_from["V"] = width
        if "A" in self.modalities:
            mapped_from["A"] = dims["A"]
            if temporal:
                self.gated_lstm = GatedBiLSTM(dims["A"], lstm_hidden)
                mapped_from["A"] = self.gated_lstm.out_dim
        if "T" in self.modalities:
            mapped_from["T"] = dims["T"]
        self.mapping = nn.ModuleDict({m: mapping_mlp(d, width, dropout) for m, d in mapped_from.items()})
        # reliability cues per step for the quality scorer ({"V": C_v, "A": C_a}); text has none
        self.cue_dims = {m: c for m, c in (cue_dims or {}).items() if m in self.modalities and c}
        self.fusion = QualityFusion(width, len(self.modalities), fusion,
                                    tuple(self.cue_dims.get(m, 0) for m in self.modalities))
        layer = nn.TransformerEncoderLayer(
            width, transformer_heads, ff_mult * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, transformer_layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
        )
        self.head = nn.Linear(width, n_outputs)

    @classmethod
    def from_params(cls, p: Stage2Params, dims: dict[str, int]) -> EMIFusionModel:
        """``dims``: feature widths V, A, T and, for ``stage2.reliability_cues``, the cue widths ``cues_V``,
        ``cues_A`` (``emi.train.fusion.dims_of``)."""
        cue_dims = None
        if p.reliability_cues and p.fusion in ("quality", "gated"):  # only the quality scorers read cues
            missing = [f"cues_{m}" for m in ("V", "A") if m in p.modalities and f"cues_{m}" not in dims]
            if missing:
                raise ValueError(f"stage2.reliability_cues is on but the features carry no cues ({missing} not in "
                                 "dims): extract them again, or set stage2.reliability_cues: false")
            cue_dims = {m: dims[f"cues_{m}"] for m in ("V", "A") if f"cues_{m}" in dims}
        return cls(
            dims,
            modalities=tuple(p.modalities),
            fusion=p.fusion,
            width=p.width,
            tcn_kernel=p.tcn_kernel,
            tcn_dilations=tuple(p.tcn_dilations),
            segments=p.segments,
            lstm_hidden=p.lstm_hidden,
            transformer_layers=p.transformer_layers,
            transformer_heads=p.transformer_heads,
            dropout=p.dropout,
            cue_dims=cue_dims,
            temporal=p.temporal,
        )

    def encode(self, v: Tensor | None, a: Tensor | None, t: Tensor | None, time_mask: Tensor) -> dict[str, Tensor]:
        """Per-modality temporal features mapped to width W: {m: (B, T, W)} (eqs. 2-6 and 4). Without the temporal
        blocks (``temporal=False``, an ablation) each step holds the clip mean of the modality's mapped features."""
        h = {}
        if not self.temporal:
            h.update({m: self._clip_mean(m, x, time_mask) for m, x in (("V", v), ("A", a)) if m in self.modalities})
        if "V" in self.modalities and self.temporal:
            h["V"] = self.mapping["V"](segment_mean_pool(self.tcn(v, time_mask), time_mask, self.segments))
        if "A" in self.modalities and self.temporal:
            h["A"] = self.mapping["A"](self.gated_lstm(a, time_mask)[0])
        if "T" in self.modalities:
            h["T"] = self.mapping["T"](t).unsqueeze(1).expand(-1, time_mask.shape[1], -1)  # one text per clip
        return h

    def _clip_mean(self, m: str, x: Tensor, time_mask: Tensor) -> Tensor:
        mapped = clip_pool(self.mapping[m](zero_padding(x, time_mask)), time_mask)
        return mapped.unsqueeze(1).expand(-1, time_mask.shape[1], -1)

    def forward(
        self, v: Tensor | None, a: Tensor | None, t: Tensor | None, time_mask: Tensor, modality_mask: Tensor,
        cues: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``cues``: per-step reliability cues {"V": (B, T, C_v), "A": (B, T, C_a)}, read only by a model built
        with ``cue_dims``."""
        B, T = time_mask.shape
        cols = [MODALITIES.index(m) for m in self.modalities]
        usable = modality_mask[:, cols]  # (B, M)
        # a missing modality may carry anything (NaN for "no face"): blank it before it enters any layer
        inputs = dict(zip(MODALITIES, (v, a, t)))
        for i, m in enumerate(self.modalities):
            x = inputs[m]
            inputs[m] = x.masked_fill(~usable[:, i].view(B, *[1] * (x.dim() - 1)), 0.0)
        h = self.encode(inputs["V"], inputs["A"], inputs["T"], time_mask)
        stacked = torch.stack([h[m] for m in self.modalities], dim=2)  # (B, T, M, W)
        available = usable.unsqueeze(1) & time_mask.unsqueeze(-1)
        scorer_cues = [None if cues is None else cues.get(m) for m in self.modalities]
        fused, weights = self.fusion(stacked, available, scorer_cues)
        x = fused + sinusoidal_positions(T, fused.shape[-1], device=fused.device)
        # a clip with no valid step attends to everything rather than to nothing (which would be NaN)
        ignore = ~time_mask & time_mask.any(1, keepdim=True)
        z = self.transformer(x, src_key_padding_mask=ignore)
        frame_pred = zero_padding(torch.sigmoid(self.head(z)), time_mask)
        clip_weights = weights.new_zeros(B, len(MODALITIES))
        clip_weights[:, cols] = clip_pool(weights, time_mask)
        return {
            "pred": clip_pool(frame_pred, time_mask),
            "frame_pred": frame_pred,
            "weights": weights,
            "clip_weights": clip_weights,
        }


# ----------------------------------------------------------------------------- losses (section 3.6)
def pearson_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """mean over outputs of 1 - Pearson r across the batch; a constant column counts as r = 0."""
    p = pred - pred.mean(0, keepdim=True)
    y = target - target.mean(0, keepdim=True)
    # eps inside the sqrt keeps the gradient finite when a column is constant
    r = (p * y).sum(0) / torch.sqrt((p * p).sum(0) * (y * y).sum(0) + eps)
    return (1.0 - r).mean()


def emi_loss(pred: Tensor, target: Tensor, pearson_weight: float = 0.0) -> Tensor:
    """MSE (section 3.6) plus, optionally, the evaluation metric turned into a loss (1 - Pearson)."""
    loss = F.mse_loss(pred, target)
    if pearson_weight > 0:
        loss = loss + pearson_weight * pearson_loss(pred, target)
    return loss
