"""CS-Flow (xray_flax/detectors/csflow): loss, score and maps against their formulas, the scale
inputs, a frozen backbone with no optimiser slots, the paper config's shapes."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from xray_flax import backbones, detectors
from xray_flax.detectors import TrainState
from xray_flax.detectors.csflow import build_flow
from xray_flax.detectors.csflow import steps as cs_steps
from xray_flax.detectors.csflow.loss import csflow_loss, csflow_map, csflow_score, resize_for_scale
from xray_flax.nn.flows import CONSTANTS


def torch_bilinear_np(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch F.interpolate(mode='bilinear', align_corners=False) of [B, h, w] maps, written out."""

    def axis_matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            lo = min(int(np.floor(src)), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1.0 - (src - lo)
            m[i, hi] += src - lo
        return m

    rows, cols = axis_matrix(maps.shape[1], size[0]), axis_matrix(maps.shape[2], size[1])
    return np.einsum("oh,bhw,pw->bop", rows, maps, cols)


def random_like(tree, rng):
    """Random values in the shapes of an abstract tree (NumPy: compiling JAX's PRNG for every
    parameter shape would take most of this file's time on the 2-core CI); gammas non-zero so
    the flow is not the identity."""

    def leaf(path, x):
        if x.dtype == jnp.int32:  # permutations
            return np.stack([rng.permutation(x.shape[-1]) for _ in range(int(np.prod(x.shape[:-1])))]).reshape(x.shape)
        if len(x.shape) == 4:
            return rng.uniform(-1, 1, x.shape).astype(np.float32) / np.sqrt(np.prod(x.shape[:3]))
        if "gamma" in jax.tree_util.keystr(path):
            return np.full(x.shape, 0.5, np.float32)
        return (0.1 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def random_zs(rng, batch=3, side=8, channels=5, scales=3):
    return [rng.normal(size=(batch, side >> k, side >> k, channels)) * (1 + k) for k in range(scales)]


@pytest.fixture(scope="module")
def setup():
    """The tiny config's detector with the installed Lite0 backbone and a random flow."""
    config = tiny.get_config("csflow")
    detector = detectors.build(config)
    images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1))
    backbone = backbones.build(config.backbone, 1)
    abstract = detector.abstract_variables(32, 1)
    variables = random_like(abstract, np.random.default_rng(0))
    variables = jax.tree.map(jnp.asarray, {**variables, "backbone": backbone.load()})
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    return config, detector, images, variables, backbone, build_flow(config, backbone)


# ------------------------------------------------------------------ formulas (pure functions)


@pytest.mark.parametrize("reduction", ["per_sample", "batch_sum"])
def test_loss_equals_its_formula(reduction):
    rng = np.random.default_rng(0)
    zs, logdet = random_zs(rng), rng.normal(size=3) * 10
    flat = np.concatenate([z.reshape(3, -1) for z in zs], axis=1)
    dims = flat.shape[1]
    assert dims == 5 * (64 + 16 + 4)
    volume = logdet if reduction == "per_sample" else logdet.sum()  # [original] | [anomalib 2.7]
    expected = np.mean(0.5 * np.sum(flat**2, axis=1) - volume) / dims
    got = csflow_loss([jnp.asarray(z, jnp.float32) for z in zs], jnp.asarray(logdet, jnp.float32), reduction)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_score_is_mean_of_half_z_squared():
    rng = np.random.default_rng(1)
    zs = random_zs(rng)
    flat = np.concatenate([z.reshape(3, -1) for z in zs], axis=1)
    got = csflow_score([jnp.asarray(z, jnp.float32) for z in zs])
    np.testing.assert_allclose(got, np.mean(flat**2 / 2, axis=1), rtol=1e-5)  # [original, anomalib]


def test_maps_equal_their_formulas():
    rng = np.random.default_rng(2)
    zs = random_zs(rng)
    jzs = [jnp.asarray(z, jnp.float32) for z in zs]
    ups = [torch_bilinear_np(np.mean(z**2, axis=-1), (32, 32)) for z in zs]
    np.testing.assert_allclose(csflow_map(jzs, (32, 32), "all"), ups[0] * ups[1] * ups[2], rtol=1e-4)  # [anomalib ALL]
    np.testing.assert_allclose(csflow_map(jzs, (32, 32), "largest"), ups[0], rtol=1e-5)  # [original]
    weights = np.asarray([64, 16, 4]) / 84
    nll = sum(w * 0.5 * u for w, u in zip(weights, ups))
    np.testing.assert_allclose(csflow_map(jzs, (32, 32), "nll"), nll, rtol=1e-5)


def test_nll_map_averages_to_the_image_score():
    """The default map's tile mean IS the image score: one normalisation and one threshold fit both."""
    zs = [jnp.asarray(z, jnp.float32) for z in random_zs(np.random.default_rng(3))]
    np.testing.assert_allclose(csflow_map(zs, (64, 64), "nll").mean(axis=(1, 2)), csflow_score(zs), rtol=1e-5)


def test_scale_inputs_follow_torch_nearest_resizing():
    x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    np.testing.assert_array_equal(resize_for_scale(x, 0, "nearest"), x)
    # torch F.interpolate(size=h/4) 'nearest': source index floor(i * 4) -> rows and columns 0, 4.
    np.testing.assert_array_equal(resize_for_scale(x, 2, "nearest"), x[:, ::4, ::4])
    area = np.asarray(x).reshape(2, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(resize_for_scale(x, 1, "area"), area)
    with pytest.raises(ValueError, match="divisible by 4"):
        resize_for_scale(jnp.zeros((1, 6, 6, 1)), 2, "nearest")


# ------------------------------------------------------------------ the detector


def test_features_are_the_tap_at_three_scales(setup):
    config, detector, images, variables, backbone, flow = setup
    feats = jax.jit(lambda v, x: cs_steps.features(backbone, v, x, scales=3, resize="nearest"))(variables, images)
    assert [f.shape for f in feats] == [(4, 8, 8, 24), (4, 4, 4, 24), (4, 2, 2, 24)]  # stage2, stride 4
    half = jax.jit(lambda v, x: backbone.features(v["backbone"], x))(variables, images[:, ::2, ::2])["stage2"]
    np.testing.assert_allclose(feats[1], half, rtol=1e-5, atol=1e-5)
    assert detector.size_multiple == 16


def test_train_step_loss_and_frozen_backbone(setup):
    config, detector, images, variables, backbone, flow = setup
    zs, logdet = jax.jit(
        lambda v, x: flow.apply(
            {"params": v["params"], CONSTANTS: v[CONSTANTS]},
            cs_steps.features(backbone, v, x, scales=3, resize="nearest"),
        )
    )(variables, images)
    flat = np.concatenate([np.asarray(z, np.float64).reshape(4, -1) for z in zs], axis=1)
    expected = np.mean(0.5 * np.sum(flat**2, axis=1) - np.asarray(logdet, np.float64)) / flat.shape[1]
    assert abs(float(np.mean(logdet))) > 1e-3  # gammas 0.5: a real transform

    state = TrainState.create(variables, detector.optimizer)
    step = jax.jit(detector.train_step)
    state, metrics = step(state, {"image": images}, jax.random.key(0), None)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["logdet"]), float(np.mean(logdet)), rtol=1e-4)
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    for i in range(2):
        state, _ = step(state, {"image": images}, jax.random.key(i + 1), None)

    before, after = jax.tree.leaves(variables["backbone"]), jax.tree.leaves(state.collections["backbone"])
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    perms = zip(jax.tree.leaves(variables[CONSTANTS]), jax.tree.leaves(state.collections[CONSTANTS]))
    assert all(np.array_equal(a, b) for a, b in perms)
    gamma = state.params["coupling_0"]["s1"]["gamma0"]
    assert not np.allclose(gamma, variables["params"]["coupling_0"]["s1"]["gamma0"])  # the flow did train
    # clip -> coupled decay -> Adam: one mu and one nu per parameter leaf (+ scalar step counts).
    param_leaves = jax.tree.leaves(state.params)
    opt_leaves = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert sorted(x.shape for x in opt_leaves) == sorted(2 * [x.shape for x in param_leaves])
    backbone_only = {x.shape for x in before} - {x.shape for x in param_leaves}
    assert backbone_only and not any(x.shape in backbone_only for x in opt_leaves)


def test_gradient_norm_is_clipped_to_one():
    """optax chain = torch clip_grad_norm_(1) then Adam(weight_decay): the first update's direction
    comes from the clipped gradient, plus the coupled decay of the parameters."""
    config = tiny.get_config("csflow")
    tx = cs_steps.make_optimizer(config.optim)
    params = {"w": jnp.ones((3,))}
    grads = {"w": jnp.asarray([30.0, 40.0, 0.0])}  # norm 50 -> clipped to [0.6, 0.8, 0]
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    g = np.asarray([0.6, 0.8, 0.0]) + 1e-5 * 1.0  # + weight_decay * params
    m, v = 0.1 * g, 0.001 * g**2  # Adam's first moments, bias-corrected below
    expected = -2e-4 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-4)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_map_and_score(setup):
    config, detector, images, variables, backbone, flow = setup
    out = jax.jit(detector.anomaly_map)(variables, images)
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    m = np.asarray(out["map"])
    assert np.all(np.isfinite(m)) and m.min() >= 0.0
    np.testing.assert_allclose(out["score"], m.mean(axis=(1, 2)), rtol=1e-5)  # 'nll' map, 'mean' score


def test_pretrained_fills_the_backbone_from_the_installed_lite0(setup):
    config, detector, images, variables, backbone, flow = setup
    host = random_like(detector.abstract_variables(32, 1), np.random.default_rng(1))
    loaded = detector.pretrained(host)
    reference = jax.tree.leaves(backbone.load())
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded["backbone"]), reference))
    for name in ("params", CONSTANTS):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded[name]), jax.tree.leaves(host[name])))


def test_paper_config_shapes():
    """configs/csflow.py: EfficientNet-B5 stage6 = 304 channels at stride 32, 768-px tiles (maps 24, 12, 6),
    sides multiples of 128 as the original asserts; the flow's 275,227,288 parameters are checked in
    tests/test_flows.py."""
    config = importlib.import_module("configs.csflow").get_config()
    backbone = backbones.build(config.backbone, config.data.channels)
    flow = build_flow(config, backbone)
    assert flow.channels == 304 and flow.blocks == 4 and flow.hidden_channels == 1024
    assert tuple(flow.kernel_sizes) == (3, 3, 3, 5)
    assert detectors.build(config).size_multiple == 128 and config.data.patch_size % 128 == 0


def test_bad_config_values_are_clear_errors():
    for key, value, message in [
        ("map_mode", "sum", "config.model.map_mode"),
        ("image_resize", "cubic", "config.model.image_resize"),
        ("kernel_sizes", (3, 4), "config.model.kernel_sizes"),
    ]:
        config = tiny.get_config("csflow")
        config.model[key] = value
        with pytest.raises(ValueError, match=message):
            detectors.build(config)
    config = tiny.get_config("csflow")
    config.backbone.taps = ("stage2", "stage3")
    with pytest.raises(ValueError, match="one backbone tap"):
        detectors.build(config)
