"""The dual-stage network: each block's shapes and equation, masks, padding, ablations, losses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from emi.config import load_params
from emi.model import (
    AlignmentModel,
    EMIFusionModel,
    GatedBiLSTM,
    QualityFusion,
    TemporalConvNet,
    clip_pool,
    emi_loss,
    info_nce,
    pearson_loss,
    segment_mean_pool,
)

DIMS = {"V": 12, "A": 10, "T": 8}
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(("V", "A", "T"), r)]


def small_model(modalities=("V", "A", "T"), fusion="quality", dropout=0.0) -> EMIFusionModel:
    torch.manual_seed(0)
    return EMIFusionModel(
        DIMS, modalities=modalities, fusion=fusion, width=16, tcn_kernel=3, tcn_dilations=(1, 2),
        segments=3, lstm_hidden=8, transformer_layers=2, transformer_heads=4, dropout=dropout,
    )


def batch(lengths=(7, 4, 1), seed=1):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    time_mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    v = torch.randn(B, T, DIMS["V"], generator=g) * time_mask[..., None]
    a = torch.randn(B, T, DIMS["A"], generator=g) * time_mask[..., None]
    t = torch.randn(B, DIMS["T"], generator=g)
    return v, a, t, time_mask, torch.ones(B, 3, dtype=torch.bool)


# ----------------------------------------------------------------------------- Stage I
def test_info_nce_is_log_n_for_random_pairs_and_small_for_aligned():
    torch.manual_seed(0)
    N, D = 64, 128
    random = torch.stack([info_nce(torch.randn(N, D), torch.randn(N, D), 1.0) for _ in range(10)]).mean()
    assert abs(random.item() - math.log(N)) < 0.05, f"unaligned pairs should cost ~log N, got {random:.3f}"
    x = torch.randn(N, D)
    aligned = info_nce(x, x + 0.1 * torch.randn(N, D), 1 / 0.07)
    assert aligned < 0.1 * math.log(N), f"aligned pairs should be nearly free, got {aligned:.3f}"
    assert torch.isclose(info_nce(x, x.flip(0), 5.0), info_nce(x.flip(0), x, 5.0)), "loss must be symmetric"


def test_info_nce_normalises_inputs_and_survives_an_empty_batch():
    x, y = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.isclose(info_nce(x, y, 3.0), info_nce(5 * x, 0.2 * y, 3.0)), "feature scale must not matter"
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = info_nce(empty, empty, 3.0)
    loss.backward()
    assert loss.item() == 0.0, "a batch where no clip has usable text should add nothing to the loss"


def test_alignment_pair_mask_equals_loss_on_the_kept_subset():
    torch.manual_seed(0)
    model = AlignmentModel(DIMS, embed_dim=6, temperature_init=0.07)
    v, a, t = torch.randn(10, 12), torch.randn(10, 10), torch.randn(10, 8)
    keep = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    has_audio = torch.tensor([1, 0, 1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    out = model(v, a, t, pair_mask=keep, at_mask=has_audio)
    sub = model(v[keep], a[keep], t[keep])
    both = keep & has_audio
    assert torch.isclose(out["loss_vt"], sub["loss_vt"]), "clips without text must not be contrastive pairs"
    assert torch.isclose(out["loss_at"], model(v[both], a[both], t[both])["loss_at"]), "no-audio clips leaked"
    assert torch.isclose(out["loss"], out["loss_vt"] + out["loss_at"])
    out["loss"].backward()
    assert model.log_logit_scale.grad is not None, "the temperature must be learned"


def test_alignment_temperature_starts_at_init_and_is_capped_like_clip():
    model = AlignmentModel(DIMS, embed_dim=6, temperature_init=0.07)
    assert math.isclose(model.logit_scale.item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(1000.0))
    assert model.logit_scale.item() == pytest.approx(100.0), "1/tau above 100 makes training unstable"


def test_alignment_project_works_on_sequences_and_vectors():
    model = AlignmentModel(DIMS, embed_dim=6, temperature_init=0.07).eval()
    seq = torch.randn(2, 5, DIMS["V"])
    assert model.project("V", seq).shape == (2, 5, 6)
    assert torch.allclose(model.project("V", seq)[:, 3], model.project("V", seq[:, 3])), "per-step != per-vector"
    assert model.project("T", torch.randn(2, DIMS["T"])).shape == (2, 6)


def test_clip_pool_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [99.0]], [[5.0], [float("nan")], [7.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert clip_pool(x, mask).flatten().tolist() == [2.0, 5.0], "padding (even NaN) leaked into the clip mean"


# ----------------------------------------------------------------------------- Stage II blocks
def test_tcn_keeps_length_and_ignores_padding():
    torch.manual_seed(0)
    tcn = TemporalConvNet(4, width=6, kernel=3, dilations=(1, 2, 4), dropout=0.0).eval()
    x = torch.randn(1, 5, 4)
    short = tcn(x, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([x, torch.randn(1, 3, 4)], dim=1)  # garbage in the padding on purpose
    long = tcn(padded, torch.arange(8)[None] < 5)
    assert short.shape == (1, 5, 6)
    assert torch.allclose(long[:, :5], short, atol=1e-6), "appending padding changed the visual features"
    assert long[:, 5:].abs().max() == 0, "padded steps must stay zero"


def test_segment_mean_pool_matches_hand_computed_segments():
    x = torch.tensor([0.0, 1, 2, 3, 4, 50, 60]).view(1, 7, 1)
    mask = torch.arange(7)[None] < 5  # L=5, M=2 -> steps {0,1,2} and {3,4}
    got = segment_mean_pool(x, mask, segments=2).flatten().tolist()
    assert got == [1.0, 1.0, 1.0, 3.5, 3.5, 0.0, 0.0]
    x2 = torch.tensor([[[2.0], [6.0], [0.0]]])
    short = segment_mean_pool(x2, torch.tensor([[True, True, False]]), segments=4)
    assert short.flatten().tolist() == [2.0, 6.0, 0.0], "a clip shorter than M should keep every step"
    empty = segment_mean_pool(x2, torch.zeros(1, 3, dtype=torch.bool), segments=4)
    assert empty.abs().sum() == 0 and not empty.isnan().any()


def test_gated_bilstm_applies_the_papers_gate():
    torch.manual_seed(0)
    block = GatedBiLSTM(5, hidden=4)
    x = torch.randn(2, 6, 5)
    mask = torch.arange(6)[None] < torch.tensor([[6], [3]])
    h_tilde, alpha = block(x, mask)
    assert h_tilde.shape == alpha.shape == (2, 6, 8)
    for b, L in enumerate((6, 3)):
        h, _ = block.lstm(x[b : b + 1, :L])  # the unpadded clip alone
        delta = torch.cat([torch.zeros_like(h[:, :1]), h[:, 1:] - h[:, :-1]], dim=1)
        expect_alpha = torch.sigmoid(block.gate(torch.cat([h, delta], dim=-1)))
        assert torch.allclose(alpha[b, :L], expect_alpha[0], atol=1e-6), "alpha != sigma(W_g[h; delta h])"
        assert torch.allclose(h_tilde[b, :L], (expect_alpha * h)[0], atol=1e-6), "h~ != alpha * h"
    assert h_tilde[1, 3:].abs().max() == 0, "padded audio steps must stay zero"


def test_quality_fusion_weights_sum_to_one_and_masked_modality_gets_exactly_zero():
    torch.manual_seed(0)
    fusion = QualityFusion(width=4, n_modalities=3)
    h = torch.randn(3, 2, 3, 4)
    available = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)[:, None].expand(3, 2, 3)
    fused, w = fusion(h, available)
    assert torch.allclose(w[:2].sum(-1), torch.ones(2, 2)), "weights over available modalities must sum to 1"
    assert (w[1, :, 1] == 0).all(), "a missing modality must get weight exactly 0"
    assert (w[2] == 0).all() and (fused[2] == 0).all() and not fused.isnan().any(), "all-missing step -> zeros"
    for mode in ("average", "concat"):
        fused, w = QualityFusion(4, 3, mode)(h, available)
        assert torch.allclose(w[1, 0], torch.tensor([0.5, 0.0, 0.5])) and fused.shape == (3, 2, 4)


def test_gated_fusion_scales_each_modality_apart_by_its_quality_weight():
    torch.manual_seed(0)
    gated = QualityFusion(width=4, n_modalities=3, mode="gated")
    h = torch.randn(2, 5, 3, 4)
    available = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=torch.bool)[:, None].expand(2, 5, 3)
    fused, w = gated(h, available)
    assert fused.shape == (2, 5, 4) and torch.allclose(w.sum(-1), torch.ones(2, 5)) and (w[1, :, 1] == 0).all()
    blocks = 3 * w.unsqueeze(-1) * h.masked_fill(~available.unsqueeze(-1), 0.0)
    assert torch.allclose(fused, gated.merge(blocks.flatten(-2)), atol=1e-6), "Linear([M b_m h_m]_m)"
    changed = h.clone()
    changed[1, :, 1] += 100.0  # a missing modality's features never reach the output
    assert torch.allclose(gated(changed, available)[0][1], fused[1], atol=1e-5)


# ----------------------------------------------------------------------------- the whole model
def test_model_shapes_and_outputs_in_unit_interval():
    model = small_model().eval()
    v, a, t, time_mask, modality_mask = batch()
    out = model(v, a, t, time_mask, modality_mask)
    assert out["pred"].shape == (3, 6) and out["frame_pred"].shape == (3, 7, 6)
    assert out["weights"].shape == (3, 7, 3) and out["clip_weights"].shape == (3, 3)
    assert ((out["pred"] >= 0) & (out["pred"] <= 1)).all(), "intensities must be in [0, 1]"
    assert torch.allclose(out["clip_weights"].sum(-1), torch.ones(3))


def test_masked_modality_has_zero_weight_and_cannot_change_the_prediction():
    model = small_model().eval()
    v, a, t, time_mask, modality_mask = batch()
    modality_mask[0, 1] = False  # clip 0 has no audio track
    modality_mask[1, 0] = False  # clip 1 has no face
    out = model(v, a, t, time_mask, modality_mask)
    a2, v2 = a.clone(), v.clone()
    a2[0] = float("nan")
    v2[1] = 1e3 * torch.randn_like(v2[1])
    out2 = model(v2, a2, t, time_mask, modality_mask)
    assert (out["weights"][0, :, 1] == 0).all() and (out["weights"][1, :, 0] == 0).all()
    assert out["clip_weights"][0, 1] == 0 and out["clip_weights"][1, 0] == 0
    assert torch.equal(out["pred"], out2["pred"]), "a missing modality's features still moved the prediction"


def test_appending_padding_does_not_change_the_prediction():
    model = small_model().eval()
    v, a, t, time_mask, modality_mask = batch()
    pad = 5
    v_long = torch.cat([v, torch.randn(3, pad, DIMS["V"])], dim=1)  # garbage in the padding on purpose
    a_long = torch.cat([a, torch.randn(3, pad, DIMS["A"])], dim=1)
    mask_long = torch.cat([time_mask, torch.zeros(3, pad, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        short = model(v, a, t, time_mask, modality_mask)["pred"]
        long = model(v_long, a_long, t, mask_long, modality_mask)["pred"]
    assert torch.allclose(short, long, atol=1e-5), "the prediction depends on how much padding the batch has"


@pytest.mark.parametrize("fusion", ["quality", "average", "concat", "gated"])
@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_every_ablation_trains(modalities, fusion):
    model = small_model(modalities, fusion, dropout=0.1).train()
    v, a, t, time_mask, modality_mask = batch()
    inputs = {m: x if m in modalities else None for m, x in zip("VAT", (v, a, t))}  # unused inputs may be None
    out = model(inputs["V"], inputs["A"], inputs["T"], time_mask, modality_mask)
    assert out["weights"].shape[-1] == len(modalities)
    unselected = [i for i, m in enumerate("VAT") if m not in modalities]
    assert (out["clip_weights"][:, unselected] == 0).all()
    emi_loss(out["pred"], torch.rand(3, 6), pearson_weight=0.5).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.isfinite().all() for g in grads), "some layer got no (or a NaN) gradient"


def test_without_temporal_blocks_the_model_sees_only_clip_means():
    """``stage2.temporal: false`` (the ablation of the TCN and gated BiLSTM): shuffling a clip's steps changes
    nothing, where the temporal model's prediction depends on the order."""
    p = load_params(None, profile="tiny", overrides=["stage2.temporal=false", "stage2.dropout=0",
                                                          "stage2.reliability_cues=false"]).stage2
    flat = EMIFusionModel.from_params(p, DIMS).eval()
    temporal = EMIFusionModel.from_params(p.model_copy(update={"temporal": True}), DIMS).eval()
    assert not hasattr(flat, "tcn") and not hasattr(flat, "gated_lstm") and hasattr(temporal, "tcn")
    v, a, t, time_mask, modality_mask = batch(lengths=(7, 7, 7))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for model, same in ((flat, True), (temporal, False)):
            pred = model(v, a, t, time_mask, modality_mask)["pred"]
            shuffled = model(v[:, order], a[:, order], t, time_mask, modality_mask)["pred"]
            assert torch.allclose(pred, shuffled, atol=1e-5) == same


def test_one_step_and_all_masked_clips_give_finite_predictions():
    model = small_model().train()
    v, a, t, time_mask, modality_mask = batch(lengths=(1, 5, 0))
    modality_mask[1] = False  # nothing usable for clip 1
    out = model(v, a, t, time_mask, modality_mask)
    assert out["pred"].isfinite().all() and out["weights"].isfinite().all(), "edge-case clip produced NaN"
    assert (out["weights"][1] == 0).all()
    out["pred"].sum().backward()
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)


def test_model_builds_from_profile_params_and_rejects_bad_heads():
    p = load_params(None, profile="tiny").stage2
    model = EMIFusionModel.from_params(p, {"V": 32, "A": 32, "T": 32, "cues_V": 5, "cues_A": 3})
    assert model.modalities == tuple(m for m in "VAT" if m in p.modalities)
    assert model.cue_dims == ({"V": 5, "A": 3} if p.reliability_cues else {})
    with pytest.raises(ValueError, match="reliability_cues"):
        EMIFusionModel.from_params(p.model_copy(update={"reliability_cues": True}), {"V": 32, "A": 32, "T": 32})
    paper = EMIFusionModel.from_params(load_params(None, profile="paper").stage2, {"V": 32, "A": 32, "T": 32})
    assert paper.cue_dims == {}, "the paper's scorer sees h_m only"
    with pytest.raises(ValueError, match="divisible"):
        EMIFusionModel(DIMS, ("V",), "quality", 10, 3, (1,), 2, 4, 1, 3, 0.0)


# ----------------------------------------------------------------------------- reliability cues
CUES = {"V": 5, "A": 3}


def cue_model(modalities=("V", "A", "T")) -> EMIFusionModel:
    torch.manual_seed(0)
    return EMIFusionModel(
        DIMS, modalities=modalities, fusion="quality", width=16, tcn_kernel=3, tcn_dilations=(1, 2),
        segments=3, lstm_hidden=8, transformer_layers=2, transformer_heads=4, dropout=0.0, cue_dims=CUES,
    )


def cues_for(time_mask, seed=2):
    g = torch.Generator().manual_seed(seed)
    B, T = time_mask.shape
    return {m: torch.rand(B, T, c, generator=g) * time_mask[..., None] for m, c in CUES.items()}


def test_the_scorer_reads_cues_and_a_missing_modality_still_weighs_nothing():
    model = cue_model().eval()
    v, a, t, time_mask, modality_mask = batch()
    cues = cues_for(time_mask)
    out = model(v, a, t, time_mask, modality_mask, cues)
    assert out["weights"].shape == (3, 7, 3) and out["pred"].shape == (3, 6)
    assert [s[0].in_features for s in model.fusion.scorers] == [16 + 5, 16 + 3, 16], "text has no cue"
    other = model(v, a, t, time_mask, modality_mask, {m: 1 - c for m, c in cues.items()})
    assert not torch.allclose(out["weights"], other["weights"]), "the weights must depend on the cues"
    modality_mask[0, 0] = False  # clip 0 without a visual modality: whatever its cues say, weight 0
    masked = model(v, a, t, time_mask, modality_mask, {m: c * 100 for m, c in cues.items()})
    assert (masked["weights"][0, :, 0] == 0).all() and masked["weights"].isfinite().all()
    assert (masked["clip_weights"][0, 0] == 0)
    valid = time_mask[1:].unsqueeze(-1).float()
    torch.testing.assert_close(masked["weights"][1:].sum(-1, keepdim=True) * valid, valid)
    with pytest.raises(ValueError, match="reliability_cues"):
        model(v, a, t, time_mask, modality_mask)


def test_cues_are_ignored_by_a_model_built_without_cue_dims():
    v, a, t, time_mask, modality_mask = batch()
    plain = small_model().eval()
    torch.testing.assert_close(plain(v, a, t, time_mask, modality_mask, cues_for(time_mask))["pred"],
                               plain(v, a, t, time_mask, modality_mask)["pred"])
    only_text = cue_model(("T",)).eval()
    assert only_text.cue_dims == {} and only_text(v, a, t, time_mask, modality_mask)["pred"].isfinite().all()


# ----------------------------------------------------------------------------- losses
def test_pearson_loss_is_zero_for_correlated_and_two_for_anticorrelated():
    y = torch.rand(32, 6)
    assert pearson_loss(2 * y + 1, y).item() == pytest.approx(0.0, abs=1e-5)
    assert pearson_loss(-y, y).item() == pytest.approx(2.0, abs=1e-5)
    constant = torch.full((32, 6), 0.5, requires_grad=True)
    loss = pearson_loss(constant, y)
    loss.backward()
    assert loss.isfinite() and constant.grad.isfinite().all(), "a constant prediction column must not give NaN"


def test_emi_loss_is_mse_plus_weighted_pearson():
    pred, y = torch.rand(16, 6), torch.rand(16, 6)
    mse = torch.nn.functional.mse_loss(pred, y)
    assert torch.isclose(emi_loss(pred, y, 0.0), mse)
    assert torch.isclose(emi_loss(pred, y, 0.5), mse + 0.5 * pearson_loss(pred, y))
