"""Networks: output shapes, parameter counts against the published architectures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from xray_flax import config_base as base
from xray_flax.detectors.draem import network as draem_model
from xray_flax.detectors.draem.network import DraemDiscriminative, DraemReconstructive
from xray_flax.nn.layers import upsample2x
from xray_flax.nn.nested_unet import NestedUNet
from xray_flax.nn.unet import UNet


def param_count(module, shape) -> int:
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


# Independent counts from the layer lists: conv3x3 with bias = 9*cin*cout + cout, BatchNorm
# = 2*cout (scale, bias), one (conv, BN) pair per entry.
def conv_bn(cin: int, cout: int) -> int:
    return 9 * cin * cout + cout + 2 * cout


def vgg(cin: int, mid: int, cout: int) -> int:
    return conv_bn(cin, mid) + conv_bn(mid, cout)


def nested_unet_count(cin: int, f=(32, 64, 128, 256, 512)) -> int:
    n = len(f)
    total = sum(vgg(cin if i == 0 else f[i - 1], f[i], f[i]) for i in range(n))
    total += sum(vgg(f[i] * j + f[i + 1], f[i], f[i]) for j in range(1, n) for i in range(n - j))
    return total + f[0] * cin + cin  # 1x1 head


def unet_count(cin: int) -> int:
    enc = vgg(cin, 64, 64) + vgg(64, 128, 128) + vgg(128, 256, 256) + vgg(256, 512, 512) + vgg(512, 512, 512)
    dec = vgg(1024, 512, 256) + vgg(512, 256, 128) + vgg(256, 128, 64) + vgg(128, 64, 64)
    return enc + dec + 64 * 2 + 2


def draem_reconstructive_count(c: int, b: int = 128) -> int:
    enc = (
        vgg(c, b, b)
        + vgg(b, 2 * b, 2 * b)
        + vgg(2 * b, 4 * b, 4 * b)
        + vgg(4 * b, 8 * b, 8 * b)
        + vgg(8 * b, 8 * b, 8 * b)
    )
    dec = (
        conv_bn(8 * b, 8 * b)
        + vgg(8 * b, 8 * b, 4 * b)
        + conv_bn(4 * b, 4 * b)
        + vgg(4 * b, 4 * b, 2 * b)
        + conv_bn(2 * b, 2 * b)
        + vgg(2 * b, 2 * b, b)
        + conv_bn(b, b)
        + vgg(b, b, b)
    )
    return enc + dec + 9 * b * c + c


def draem_discriminative_count(c: int, b: int = 64) -> int:
    enc = (
        vgg(c, b, b)
        + vgg(b, 2 * b, 2 * b)
        + vgg(2 * b, 4 * b, 4 * b)
        + vgg(4 * b, 8 * b, 8 * b)
        + vgg(8 * b, 8 * b, 8 * b)
        + vgg(8 * b, 8 * b, 8 * b)
    )
    dec = (
        conv_bn(8 * b, 8 * b)
        + vgg(16 * b, 8 * b, 8 * b)
        + conv_bn(8 * b, 4 * b)
        + vgg(12 * b, 4 * b, 4 * b)
        + conv_bn(4 * b, 2 * b)
        + vgg(6 * b, 2 * b, 2 * b)
        + conv_bn(2 * b, b)
        + vgg(3 * b, b, b)
        + conv_bn(b, b)
        + vgg(2 * b, b, b)
    )
    return enc + dec + 9 * b * 2 + 2


def test_paper_networks_match_layer_lists_and_pytorch_counts():
    assert param_count(NestedUNet(out_channels=1), (1, 32, 32, 1)) == nested_unet_count(1) == 9_162_753
    assert param_count(UNet(), (1, 32, 32, 2)) == unet_count(2) == 17_266_882
    # 9,162,753 and 17,266,882: the PyTorch UNet++/U-Net of benchmarks/peer/unetpp_torch_bench.py
    # (benchmarks/peer/RESULTS.md).


def test_draem_networks_match_layer_lists_and_anomalib_counts():
    assert (
        param_count(DraemReconstructive(out_channels=3), (1, 32, 32, 3)) == draem_reconstructive_count(3) == 69_048_579
    )
    assert param_count(DraemDiscriminative(), (1, 32, 32, 6)) == draem_discriminative_count(6) == 28_374_146


@pytest.mark.gpu
@pytest.mark.parametrize("reconstructive,discriminative", [("nested_unet", "unet"), ("draem", "draem")])
@pytest.mark.parametrize("channels", [1, 3])
def test_detector_output_shapes(reconstructive, discriminative, channels):
    cfg = base.get_base_config().model
    cfg.reconstructive, cfg.discriminative, cfg.width_multiplier = reconstructive, discriminative, 1 / 16
    model = draem_model.build_model(cfg, channels)
    x = jnp.linspace(0, 1, 2 * 64 * 64 * channels).reshape(2, 64, 64, channels)
    variables = model.init(jax.random.key(0), x, train=False)
    (rec, logits), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert rec.shape == (2, 64, 64, channels) and logits.shape == (2, 64, 64, 2)
    assert rec.dtype == logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


def test_width_multiplier_and_levels_shrink_the_network():
    cfg = base.get_base_config().model
    cfg.width_multiplier, cfg.nested_unet_levels = 0.25, 4
    rec = draem_model.build_reconstructive(cfg, 1)
    assert rec.filters == (8, 16, 32, 64)
    assert param_count(rec, (1, 32, 32, 1)) == nested_unet_count(1, (8, 16, 32, 64))


def test_deep_supervision_adds_one_head_per_top_node():
    with_ds = NestedUNet(out_channels=1, filters=(4, 8, 16), deep_supervision=True)
    without = NestedUNet(out_channels=1, filters=(4, 8, 16))
    assert param_count(with_ds, (1, 16, 16, 1)) - param_count(without, (1, 16, 16, 1)) == 4 + 1


def test_bad_sizes_and_names_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by 16"):
        NestedUNet(out_channels=1).init(jax.random.key(0), jnp.zeros((1, 40, 40, 1)), train=False)
    cfg = base.get_base_config().model
    cfg.reconstructive = "resnet"
    with pytest.raises(ValueError, match="reconstructive='resnet'"):
        draem_model.build_model(cfg, 1)


def test_upsample_align_corners_matches_scipy_zoom():
    x = np.random.default_rng(0).random((2, 5, 7, 3)).astype(np.float32)
    got = np.asarray(upsample2x(jnp.asarray(x), align_corners=True))
    # scipy's zoom with grid_mode=False maps corner pixel centres onto each other.
    want = scipy.ndimage.zoom(x, (1, 10 / 5, 14 / 7, 1), order=1, grid_mode=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (2, 10, 14, 3)
