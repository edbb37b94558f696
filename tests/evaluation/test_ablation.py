"""The ablation grid's cells around the configured Stage-II model."""

from emi.evaluation.ablation import INPUTS, MODALITY_SETS, ablation_grid
from emi.model import FUSIONS
from tests.conftest import tiny


def test_grid_is_every_modality_subset_then_each_other_fusion_and_input_then_the_clip_means():
    base = tiny("stage2.fusion=gated", "stage2.inputs=both").stage2
    grid = ablation_grid(base)
    assert len(grid) == len(MODALITY_SETS) + len(FUSIONS) - 1 + len(INPUTS) - 1 + 1
    cells = [("".join(p.modalities), p.fusion, p.inputs, p.temporal) for p in grid]
    assert cells[:7] == [(m, "gated", "both", True) for m in ("V", "A", "T", "VA", "VT", "AT", "VAT")]
    assert cells[7:] == [("VAT", "quality", "both", True), ("VAT", "average", "both", True),
                         ("VAT", "concat", "both", True), ("VAT", "gated", "aligned", True),
                         ("VAT", "gated", "encoder", True), ("VAT", "gated", "both", False)]
    # the configured model is a cell (the ablation reuses its seed-0 training); every other value stays base's
    assert sum(p == base for p in grid) == 1
    assert {p.model_copy(update={"modalities": base.modalities, "fusion": base.fusion, "inputs": base.inputs,
                                 "temporal": base.temporal}) == base for p in grid} == {True}


def test_a_smaller_grid_keeps_the_order():
    base = tiny("stage2.fusion=quality", "stage2.inputs=both").stage2
    grid = ablation_grid(base, ("V", "VAT"), ("quality", "average"), ("both", "aligned"))
    assert [("".join(p.modalities), p.fusion, p.inputs, p.temporal) for p in grid] == [
        ("V", "quality", "both", True), ("VAT", "quality", "both", True), ("VAT", "average", "both", True),
        ("VAT", "quality", "aligned", True), ("VAT", "quality", "both", False)]
