"""FastFlow (xray_flax/detectors/fastflow): loss and map against their formulas, the LayerNorm
against NumPy, a frozen backbone with no optimiser slots, anomalib's parameter count."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from xray_flax import backbones, detectors
from xray_flax.detectors import TrainState
from xray_flax.detectors.fastflow import build_head
from xray_flax.detectors.fastflow import steps as ff_steps
from xray_flax.detectors.fastflow.loss import fastflow_map
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
    """Random values in the shapes of an abstract tree: kernels uniform(+-1/sqrt(fan_in)) as torch,
    LayerNorm scales 1, everything else small (NumPy: compiling JAX's PRNG for every parameter
    shape would take most of this file's time on the 2-core CI)."""

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if x.dtype == jnp.int32:  # permutations
            return np.stack([rng.permutation(x.shape[-1]) for _ in range(int(np.prod(x.shape[:-1])))]).reshape(x.shape)
        if len(x.shape) == 4:
            return rng.uniform(-1, 1, x.shape).astype(np.float32) / np.sqrt(np.prod(x.shape[:3]))
        if "norm_" in name and "scale" in name:
            return np.ones(x.shape, np.float32)
        if "global_scale" in name:
            return np.full(x.shape, 2.0 * np.log(np.expm1(5.0)), np.float32)  # FrEIA's start: g = 1
        return (0.1 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, tree)


@pytest.fixture(scope="module")
def setup():
    """The tiny config's detector with the installed Lite0 backbone and a random head."""
    config = tiny.get_config("fastflow")
    detector = detectors.build(config)
    images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1))
    backbone = backbones.build(config.backbone, 1)
    abstract = detector.abstract_variables(32, 1)
    variables = random_like(abstract, np.random.default_rng(0))
    variables = jax.tree.map(jnp.asarray, {**variables, "backbone": backbone.load()})
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    head = build_head(config, backbone)
    return config, detector, images, variables, backbone, head


def test_variables_layout(setup):
    config, detector, images, variables, backbone, head = setup
    assert set(variables) == {"params", CONSTANTS, "backbone"}
    assert set(variables["backbone"]) == {"params", "batch_stats"}
    norm = variables["params"]["norm_stage2"]
    assert norm["scale"].shape == (8, 8, 24) and norm["bias"].shape == (8, 8, 24)  # [H, W, C] of the 32-px tile
    assert detector.size_multiple == 8 and not detector.bounded_map


def test_layer_norm_is_torch_layernorm_over_chw(setup):
    config, detector, images, variables, backbone, head = setup
    feats = jax.jit(lambda v, x: ff_steps.features(backbone, v, x))(variables, images)
    _, state = jax.jit(lambda v, f: head.apply(v, f, capture_intermediates=True))(
        ff_steps.head_variables(variables), feats
    )
    got = np.asarray(state["intermediates"]["norm_stage3"]["__call__"][0])
    x = np.asarray(feats["stage3"], np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)  # biased, as torch
    scale = np.asarray(variables["params"]["norm_stage3"]["scale"])
    bias = np.asarray(variables["params"]["norm_stage3"]["bias"])
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-4)


def test_loss_equals_its_formula(setup):
    config, detector, images, variables, backbone, head = setup
    zs, logdets = jax.jit(lambda v, x: head.apply(ff_steps.head_variables(v), ff_steps.features(backbone, v, x)))(
        variables, images
    )
    expected = sum(
        np.mean(0.5 * np.sum(np.asarray(z, np.float64) ** 2, axis=(1, 2, 3)) - np.asarray(logdets[t], np.float64))
        for t, z in zs.items()
    )
    state = TrainState.create(variables, detector.optimizer)
    _, metrics = jax.jit(detector.train_step)(state, {"image": images}, jax.random.key(2), None)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_stage2"] + metrics["loss_stage3"]), expected, rtol=1e-5)
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0


def test_backbone_is_frozen_and_has_no_optimizer_slots(setup):
    config, detector, images, variables, backbone, head = setup
    state = TrainState.create(variables, detector.optimizer)
    step = jax.jit(detector.train_step)
    for i in range(3):
        state, metrics = step(state, {"image": images}, jax.random.key(i), None)
    before = jax.tree.leaves(variables["backbone"])
    after = jax.tree.leaves(state.collections["backbone"])
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(variables[CONSTANTS]), jax.tree.leaves(state.collections[CONSTANTS]))
    )
    assert not np.allclose(state.params["flow_stage2"]["block_0"]["global_offset"], 0.0)  # the head did train
    # Adam after the coupled decay: one mu and one nu per parameter leaf, plus the step count.
    param_leaves = jax.tree.leaves(state.params)
    opt_leaves = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert len(opt_leaves) == 2 * len(param_leaves)
    assert sorted(x.shape for x in opt_leaves) == sorted(2 * [x.shape for x in param_leaves])
    param_shapes = {x.shape for x in param_leaves}
    backbone_only = {x.shape for x in before} - param_shapes
    assert backbone_only and not any(x.shape in backbone_only for x in opt_leaves)


def test_map_shape_range_and_score(setup):
    config, detector, images, variables, backbone, head = setup
    out = jax.jit(detector.anomaly_map)(variables, images)
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    m = np.asarray(out["map"])
    assert np.all(np.isfinite(m)) and m.min() >= -1.0 and m.max() <= 0.0
    np.testing.assert_allclose(out["score"], m.max(axis=(1, 2)), rtol=1e-6)  # [anomalib: amax]


def test_map_equals_the_anomalib_formula():
    rng = np.random.default_rng(0)
    zs = {"a": rng.normal(size=(2, 8, 8, 5)), "b": 2.0 * rng.normal(size=(2, 4, 4, 7))}
    got = fastflow_map({k: jnp.asarray(v, jnp.float32) for k, v in zs.items()}, (32, 32))
    per_tap = [torch_bilinear_np(-np.exp(-0.5 * np.mean(z**2, axis=-1)), (32, 32)) for z in zs.values()]
    np.testing.assert_allclose(got, np.mean(per_tap, axis=0), rtol=1e-5, atol=1e-6)


def test_pretrained_fills_the_backbone_from_the_installed_lite0(setup):
    """Random variables in init's shapes -> pretrained: the installed Lite0 weights, the head untouched.
    (detector.init itself runs in tests/test_cli.py; compiling it here would double this file's time.)"""
    config, detector, images, variables, backbone, head = setup
    host = random_like(detector.abstract_variables(32, 1), np.random.default_rng(1))
    loaded = detector.pretrained(host)
    assert jax.tree.structure(loaded) == jax.tree.structure(host)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(host)))
    reference = jax.tree.leaves(backbone.load())
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded["backbone"]), reference))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(host["backbone"]), reference))
    for name in ("params", CONSTANTS):  # the head is untouched
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded[name]), jax.tree.leaves(host[name])))


def test_resnet18_config_matches_anomalib_parameter_count():
    """configs/fastflow.py: ResNet-18 layers 1-3 at 256 px. anomalib 2.7 FastflowModel('resnet18', 256)
    has 3,510,528 trainable parameters (3 LayerNorms + 3 x 8 AllInOne blocks; counted in the peer venv)."""
    config = importlib.import_module("configs.fastflow").get_config()
    detector = detectors.build(config)
    shapes = detector.abstract_variables(config.data.patch_size, config.data.channels)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == 3_510_528
    assert detector.size_multiple == 16


def test_bad_config_values_are_clear_errors():
    config = tiny.get_config("fastflow")
    config.model.image_score = "median"
    with pytest.raises(ValueError, match="config.model.image_score"):
        detectors.build(config)
    config = tiny.get_config("fastflow")
    config.model.flow_steps = 0
    with pytest.raises(ValueError, match="config.model.flow_steps"):
        detectors.build(config)
