"""Reverse Distillation: loss and map against NumPy/SciPy, shapes and parameter counts against
anomalib's networks, and the frozen encoder through training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.ndimage

from configs import tiny
from xray_flax import backbones, detectors
from xray_flax.config_base import get_base_config
from xray_flax.detectors.base import TrainState
from xray_flax.detectors.reverse_distillation import build_head, resolve_tap_relu
from xray_flax.detectors.reverse_distillation import loss as rd_loss
from xray_flax.detectors.reverse_distillation.network import ReverseDistillationHead

# anomalib 2.7, ReverseDistillationModel(backbone, pre_trained=False, layers layer1-3): parameters
# of `bottleneck` + `decoder`, counted in the peer venv (benchmarks/peer/compare_rd_heads.py,
# benchmarks/results/peer_rd_heads.json). The OCBE's conv4 (1x1, 1024e -> 512e) and bn4 are
# created but never called, and one backward pass gives them no gradient; we do not build them.
ANOMALIB_PARAMS = {"wide_resnet50_2": 64_139_776, "resnet18": 15_908_480}
ANOMALIB_CONV4_BN4 = {"wide_resnet50_2": 4096 * 2048 + 2 * 2048, "resnet18": 1024 * 512 + 2 * 512}
ANOMALIB_WITH_GRADIENT = {"wide_resnet50_2": 55_747_072, "resnet18": 15_383_168}
# Running mean + variance of every BN in anomalib's bottleneck + decoder (conv4's bn4 excluded).
ANOMALIB_BN_BUFFERS = {"wide_resnet50_2": 61_952 - 2 * 2048, "resnet18": 11_904 - 2 * 512}


def _numpy_cos(a, b, axis):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.maximum(np.linalg.norm(a, axis=axis), 1e-8)
    nb = np.maximum(np.linalg.norm(b, axis=axis), 1e-8)
    return np.sum(a * b, axis=axis) / (na * nb)


def _pairs(rng, shapes):
    enc = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    dec = [np.maximum(rng.standard_normal(s), 0).astype(np.float32) for s in shapes]
    return enc, dec


def _num(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_loss_is_the_flattened_cosine_formula():
    rng = np.random.default_rng(0)
    enc, dec = _pairs(rng, [(3, 8, 8, 5), (3, 4, 4, 7)])
    dec[1][1] = 0.0  # an all-zero decoded image: similarity 0 (torch's eps), not NaN
    total, terms = rd_loss.distillation_loss([jnp.asarray(e) for e in enc], [jnp.asarray(d) for d in dec])
    want = [np.mean(1 - _numpy_cos(e.reshape(3, -1), d.reshape(3, -1), axis=1)) for e, d in zip(enc, dec)]
    np.testing.assert_allclose([float(t) for t in terms], want, rtol=1e-5)
    np.testing.assert_allclose(float(total), sum(want), rtol=1e-5)
    grads = jax.grad(lambda d: rd_loss.distillation_loss([jnp.asarray(e) for e in enc], d)[0])(
        [jnp.asarray(d) for d in dec]
    )
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def _align_corners_numpy(m, size):
    """Bilinear align_corners=True by scipy's order-1 interpolation at o * (h - 1) / (H - 1)."""
    b, h, w = m.shape
    ys = np.arange(size[0]) * (h - 1) / (size[0] - 1)
    xs = np.arange(size[1]) * (w - 1) / (size[1] - 1)
    grid = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([scipy.ndimage.map_coordinates(x, grid, order=1) for x in m.astype(np.float64)])


@pytest.mark.parametrize(
    "mode,border,scipy_mode",
    # torch 'reflect' (anomalib's blur) is scipy's 'mirror'; scipy's 'reflect' is the original code's.
    [("add", "torch", "mirror"), ("multiply", "scipy", "reflect")],
)
def test_anomaly_map_is_the_formula(mode, border, scipy_mode):
    rng = np.random.default_rng(1)
    enc, dec = _pairs(rng, [(2, 8, 8, 6), (2, 4, 4, 10), (2, 2, 2, 12)])
    size = (40, 40)
    amap = rd_loss.anomaly_map(
        [jnp.asarray(e) for e in enc], [jnp.asarray(d) for d in dec], size, mode=mode, sigma=4.0, border=border
    )
    ups = [_align_corners_numpy(1 - _numpy_cos(e, d, axis=-1), size) for e, d in zip(enc, dec)]
    combined = np.sum(ups, axis=0) if mode == "add" else np.prod(ups, axis=0)
    # kernel 2 * int(4 * 4 + 0.5) + 1 = 33 (anomalib) = scipy's radius int(truncate * sigma + 0.5).
    want = np.stack([scipy.ndimage.gaussian_filter(m, 4.0, mode=scipy_mode, truncate=4.0) for m in combined])
    assert amap.shape == (2, 40, 40) and amap.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(amap), want, rtol=1e-5, atol=1e-6)


def test_upsampling_is_align_corners():
    m = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    up = np.asarray(rd_loss.upsample_bilinear_align_corners(jnp.asarray(m), (3, 5)))
    # Corners are kept exactly; the middle row is the mean of the two rows.
    np.testing.assert_allclose(up[0, [0, 0, -1, -1], [0, -1, 0, -1]], [0, 2, 3, 5], atol=1e-6)
    np.testing.assert_allclose(up[0, 1], [1.5, 2.0, 2.5, 3.0, 3.5], atol=1e-6)


@pytest.mark.parametrize("name,channels", [("wide_resnet50_2", (256, 512, 1024)), ("resnet18", (64, 128, 256))])
def test_head_shapes_and_parameter_count_match_anomalib(name, channels):
    """eval_shape only (no WRN50-2 is run): the detector of configs/reverse_distillation.py (and
    its ResNet-18 variant) at 256 px decodes every encoder tap at its shape, and its parameters
    are anomalib's bottleneck + decoder less the unused conv4/bn4."""
    config = get_base_config("reverse_distillation")
    config.backbone.name = name
    detector = detectors.build(config)
    backbone = backbones.build(config.backbone, config.data.channels)
    head = build_head(config, backbone)
    images = jax.ShapeDtypeStruct((2, 256, 256, config.data.channels), jnp.float32)
    variables = jax.eval_shape(detector.init, jax.random.key(0), images)

    def taps_and_decoded(v, x):
        taps = [backbone.features(v["backbone"], x)[t] for t in backbone.taps]
        return taps, head.apply({"params": v["params"], "batch_stats": v["batch_stats"]}, taps)

    taps, decoded = jax.eval_shape(taps_and_decoded, variables, images)
    want = [(2, 256 // s, 256 // s, c) for s, c in zip((4, 8, 16), channels)]  # WRN50-2: 256@64^2 ... 1024@16^2
    assert [t.shape for t in taps] == [d.shape for d in decoded] == want
    assert _num(variables["params"]) == ANOMALIB_PARAMS[name] - ANOMALIB_CONV4_BN4[name] == ANOMALIB_WITH_GRADIENT[name]
    assert _num(variables["batch_stats"]) == ANOMALIB_BN_BUFFERS[name]
    # The embedding: 2048 channels for WRN50-2 (3 Bottlenecks, planes 512), 512 for ResNet-18 (2 BasicBlocks).
    ocbe = variables["params"]["bottleneck"]
    blocks = sorted(k for k in ocbe if k.startswith("layer_"))
    assert len(blocks) == (3 if name == "wide_resnet50_2" else 2)
    assert ocbe[blocks[-1]]["conv3" if name == "wide_resnet50_2" else "conv2"]["kernel"].shape[-1] == 2 * channels[-1]
    assert detector.size_multiple == 32


def test_tap_activation_auto_follows_the_encoder():
    for name, want in (("wide_resnet50_2", True), ("resnet18", True), ("efficientnet_lite0", False)):
        config = get_base_config("reverse_distillation")
        assert resolve_tap_relu(config.model, name) is want


def _tiny_config(**overrides) -> ml_collections.ConfigDict:
    config = tiny.get_config("reverse_distillation")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def test_lite0_decoder_matches_the_taps():
    """Three Lite0 taps at 64 px (the CPU config's): shapes only, through eval_shape."""
    config = _tiny_config(**{"backbone.taps": ("stage2", "stage3", "stage4"), "model.decoder_blocks": (1, 1, 1)})
    detector = detectors.build(config)
    assert detector.size_multiple == 32  # twice stage4's stride 16
    images = jax.ShapeDtypeStruct((2, 64, 64, config.data.channels), jnp.float32)
    variables = jax.eval_shape(detector.init, jax.random.key(0), images)
    assert set(variables) == {"params", "batch_stats", "backbone"}
    backbone = backbones.build(config.backbone, config.data.channels)
    head = build_head(config, backbone)

    def taps_and_decoded(v, x):
        taps = [backbone.features(v["backbone"], x)[t] for t in backbone.taps]
        return taps, head.apply({"params": v["params"], "batch_stats": v["batch_stats"]}, taps)

    taps, decoded = jax.eval_shape(taps_and_decoded, variables, images)
    assert [d.shape for d in decoded] == [t.shape for t in taps] == [(2, 16, 16, 24), (2, 8, 8, 40), (2, 4, 4, 80)]
    out = jax.eval_shape(detector.anomaly_map, variables, images)
    assert out["map"].shape == (2, 64, 64) and out["score"].shape == (2,)


@pytest.fixture(scope="module")
def tiny_rd():
    """The tiny detector (configs/tiny.py:reverse_distillation) with the real Lite0 encoder."""
    config = _tiny_config()
    detector = detectors.build(config)
    # detector.init's random encoder would be replaced at once (and its jitted init is slow to
    # compile on 2 cores): the head is initialised alone, the encoder is the pretrained file's.
    backbone = backbones.build(config.backbone, config.data.channels)
    taps = [
        jnp.zeros((1, 32 // backbone.strides[t], 32 // backbone.strides[t], backbone.channels[t]))
        for t in backbone.taps
    ]
    head_vars = jax.jit(build_head(config, backbone).init)(jax.random.key(0), taps)
    want = jax.eval_shape(detector.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
    variables = detector.pretrained({**head_vars, "backbone": want["backbone"]})
    assert jax.tree.map(lambda x: x.shape, want) == jax.tree.map(np.shape, variables)
    images = jax.random.uniform(jax.random.key(2), (4, 32, 32, config.data.channels))
    return detector, jax.tree.map(jnp.asarray, variables), images


def test_map_is_inference_mode_and_score_is_its_max(tiny_rd):
    detector, variables, images = tiny_rd
    amap = jax.jit(detector.anomaly_map)
    out = amap(variables, images)
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    np.testing.assert_allclose(np.asarray(out["score"]), np.asarray(out["map"]).max(axis=(1, 2)), rtol=1e-6)
    # Inference-mode BN: a tile's map does not depend on the other tiles of its batch.
    other = amap(variables, images.at[0].set(1.0 - images[0]))["map"]
    assert not np.allclose(np.asarray(other[0]), np.asarray(out["map"][0]))
    np.testing.assert_allclose(np.asarray(other[1:]), np.asarray(out["map"][1:]), rtol=1e-5, atol=1e-7)


def test_decoded_taps_are_signed_only_without_the_final_relu(tiny_rd):
    """anomalib's decoder ends each stage in a ReLU (ResNet taps are >= 0); Lite0's taps are
    signed, and tap_activation 'auto' drops that ReLU (same parameters, one module flag)."""
    detector, variables, images = tiny_rd
    config = _tiny_config()
    backbone = backbones.build(config.backbone, config.data.channels)
    signed = build_head(config, backbone)
    assert not signed.spec.tap_relu
    relu = ReverseDistillationHead(dataclasses.replace(signed.spec, tap_relu=True))

    def decode(v, x):
        taps = [backbone.features(v["backbone"], x)[t] for t in backbone.taps]
        head_vars = {"params": v["params"], "batch_stats": v["batch_stats"]}
        return taps, signed.apply(head_vars, taps), relu.apply(head_vars, taps)

    taps, out_signed, out_relu = jax.jit(decode)(variables, images)
    assert all(bool((np.asarray(t) < 0).any()) for t in taps)  # the encoder's taps are signed
    assert all(bool((np.asarray(d) < 0).any()) for d in out_signed)
    assert all(float(np.asarray(d).min()) >= 0 for d in out_relu)
    # The deepest stage sees the same input in both: its outputs differ by the final ReLU only.
    np.testing.assert_allclose(
        np.maximum(np.asarray(out_signed[-1]), 0), np.asarray(out_relu[-1]), rtol=1e-5, atol=1e-6
    )


def _is_adam(x) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def test_training_leaves_the_encoder_alone_and_out_of_the_optimiser(tiny_rd):
    detector, variables, images = tiny_rd
    state = TrainState.create(variables, detector.optimizer)
    # Adam's slots exist for the head's params only: the encoder never reaches the optimiser.
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=_is_adam) if _is_adam(s)]
    assert len(adam) == 1
    params_structure = jax.tree.structure(state.params)
    assert jax.tree.structure(adam[0].mu) == jax.tree.structure(adam[0].nu) == params_structure
    assert _num(state.opt_state) - _num(adam[0].mu) - _num(adam[0].nu) <= 2  # nothing else but step counts
    assert _num(variables["backbone"]) > _num(state.params)
    step = jax.jit(detector.train_step)
    new = state
    losses = []
    for i in range(3):
        new, metrics = step(new, {"image": images}, jax.random.key(i), None)
        losses.append(float(metrics["loss"]))
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        variables["backbone"],
        new.collections["backbone"],
    )
    assert all(jax.tree.leaves(same))
    # The head trained (train-mode BN: its running statistics moved too).
    assert not np.allclose(np.asarray(jax.tree.leaves(new.params)[0]), np.asarray(jax.tree.leaves(state.params)[0]))
    bs_old, bs_new = jax.tree.leaves(state.collections["batch_stats"]), jax.tree.leaves(new.collections["batch_stats"])
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(bs_old, bs_new))
    assert losses[-1] < losses[0]
    assert set(metrics) >= {"loss", "grad_norm", "loss_stage2", "loss_stage3"}


def test_pretrained_fills_the_encoder_from_the_lite0_package():
    detector = detectors.build(_tiny_config())
    variables = jax.eval_shape(detector.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    random = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    filled = detector.pretrained(random)
    assert jax.tree.structure(filled) == jax.tree.structure(random)
    assert any(np.abs(np.asarray(x)).sum() > 0 for x in jax.tree.leaves(filled["backbone"]))
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(filled["params"]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"backbone.taps": ("stage4", "stage5")}, "config.backbone.taps"),  # strides 16, 16
        ({"model.decoder_blocks": (1,)}, "config.model.decoder_blocks"),
        ({"model.map_mode": "max"}, "config.model.map_mode"),
        ({"model.block": "dense"}, "config.model.block"),
        ({"model.tap_activation": "gelu"}, "config.model.tap_activation"),
        ({"model.blur_border": "zeros"}, "config.model.blur_border"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        detectors.build(_tiny_config(**overrides))
