"""The encoder registry: code revisions in the feature key, loading the extract encoders with fine-tuned blocks."""

import pytest
import torch

from emi.encoders.base import EncoderError
from emi.encoders.registry import encoder_key, encoder_spec, feature_revision, load_encoders
from emi.encoders.tuning import block_state
from emi.encoders.visual import FerEncoder
from tests.conftest import tiny

CPU = torch.device("cpu")




def test_feature_key_holds_the_spec_and_the_code_revision(monkeypatch):
    cfg = tiny().extract
    assert feature_revision("visual", "fer") == FerEncoder.revision
    assert feature_revision("visual", "no-such-kind") == 1
    key = encoder_key(cfg, "visual")
    assert key == {"spec": encoder_spec(cfg, "visual"), "revision": FerEncoder.revision}
    monkeypatch.setattr(FerEncoder, "revision", FerEncoder.revision + 1)  # code that changes the features
    assert encoder_key(cfg, "visual") != key
    assert encoder_key(cfg, "text") == encoder_key(tiny().extract, "text")
    assert encoder_key(tiny("extract.visual.pool_grid=1", "extract.visual.dim=135").extract, "visual")["spec"] != key[
        "spec"]


@pytest.mark.slow
def test_load_encoders_applies_tuned_blocks_and_refuses_another_spec():
    cfg = tiny().extract
    encoders = load_encoders(cfg, CPU, torch.float32, {"visual"})
    assert set(encoders) == {"visual"}
    blocks = encoders["visual"].blocks()
    last = blocks.last(1, "extract.visual")
    state = {k: torch.full_like(v, 0.5) for k, v in block_state(encoders["visual"], last).items()}
    assert state
    tuned = {"visual": {"spec": encoder_spec(cfg, "visual"), "state": state, "blocks": last},
             "text": {"spec": {"other": True}, "state": {}, "blocks": []}}  # not loaded here: ignored
    again = load_encoders(cfg, CPU, torch.float32, {"visual"}, tuned)
    got = block_state(again["visual"], last)
    assert all(torch.equal(got[k], state[k]) for k in state), "the fine-tuned weights were not applied"

    other = {"visual": {**tuned["visual"], "spec": encoder_spec(tiny("extract.visual.name=other").extract, "visual")}}
    with pytest.raises(EncoderError, match="fine-tuned .* but the params say"):
        load_encoders(cfg, CPU, torch.float32, {"visual"}, other)
