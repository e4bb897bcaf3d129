"""SuperSimpleNet: the losses and the feature aggregation against NumPy written from the paper's
formulas, the Perlin masks' statistics, the supervised batch handling, the optimiser groups,
shapes, training on a tiny config, determinism, and (with the peer venv) the modules against
anomalib 2.7's with the same weights."""

from __future__ import annotations

import functools
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs import tiny
from xray_flax import detectors, errors
from xray_flax.detectors import TrainState
from xray_flax.detectors.supersimplenet import anomaly_generator, network, steps
from xray_flax.detectors.supersimplenet import loss as ssn_loss
from xray_flax.nn.anomaly_maps import gaussian_blur, upsample_bilinear

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_PYTHON = "/tmp/peer/bin/python"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_focal(logits, targets, gamma, alpha=-1.0):
    """The focal loss of the paper (Lin et al.): BCE(p, y) (1 - p_t)^gamma, mean."""
    p = _sigmoid(logits.astype(np.float64))
    ce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def numpy_truncated_l1(logits, masks, t):
    normal, anomalous = logits[masks == 0], logits[masks > 0]
    n = np.maximum(normal + t, 0).mean() if normal.size else 0.0
    a = np.maximum(t - anomalous, 0).mean() if anomalous.size else 0.0
    return n + a


def test_focal_loss_and_truncated_l1_equal_the_formulas():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 6, 5)) * 3).astype(np.float32)
    masks = (rng.uniform(size=(3, 6, 5)) > 0.7).astype(np.float32)
    for gamma, alpha in ((4.0, -1.0), (2.0, 0.25), (0.0, -1.0)):
        got = float(ssn_loss.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(masks), gamma=gamma, alpha=alpha))
        np.testing.assert_allclose(got, numpy_focal(logits, masks, gamma, alpha), rtol=1e-5)
    got = float(ssn_loss.truncated_l1(jnp.asarray(logits), jnp.asarray(masks), truncation=0.5))
    np.testing.assert_allclose(got, numpy_truncated_l1(logits, masks, 0.5), rtol=1e-5)
    # No anomalous pixel: that mean is 0, not NaN (the references' empty-set rule).
    zeros = np.zeros_like(masks)
    got = float(ssn_loss.truncated_l1(jnp.asarray(logits), jnp.asarray(zeros), truncation=0.5))
    np.testing.assert_allclose(got, numpy_truncated_l1(logits, zeros, 0.5), rtol=1e-5)
    # Large logits stay finite (the cross-entropy from logits, not from a saturated sigmoid).
    big = jnp.asarray([[40.0, -40.0]])
    assert np.isfinite(float(ssn_loss.sigmoid_focal_loss(big, jnp.asarray([[0.0, 1.0]]), gamma=4.0)))
    scores = rng.normal(size=(3,)).astype(np.float32)
    labels = np.array([0.0, 1.0, 1.0], np.float32)
    total, terms = ssn_loss.supersimplenet_loss(
        jnp.asarray(logits), jnp.asarray(scores), jnp.asarray(masks), jnp.asarray(labels),
        gamma=4.0, alpha=-1.0, truncation=0.5,
    )  # fmt: skip
    expected = (
        numpy_focal(logits, masks, 4.0) + numpy_truncated_l1(logits, masks, 0.5) + numpy_focal(scores, labels, 4.0)
    )
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert set(terms) == {"seg_focal", "seg_l1", "cls_focal"}


def numpy_bilinear(x, size):
    """torch F.interpolate(bilinear, align_corners=False) of [B, h, w, C], from its formula:
    source = (i + 0.5) * in / out - 0.5, clamped at 0, neighbours clamped at the edge."""

    def axis_weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis_weights(x.shape[1], size[0])
    x0, x1, wx = axis_weights(x.shape[2], size[1])
    rows = x[:, y0] * (1 - wy)[None, :, None, None] + x[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def test_feature_aggregation_equals_numpy_and_scipy():
    rng = np.random.default_rng(1)
    taps = {
        "a": rng.normal(size=(2, 4, 4, 3)).astype(np.float32),
        "b": rng.normal(size=(2, 2, 2, 5)).astype(np.float32),
    }
    got = np.asarray(network.upscaled_features({k: jnp.asarray(v) for k, v in taps.items()}, ("a", "b")))
    up = np.concatenate([numpy_bilinear(taps["a"], (8, 8)), numpy_bilinear(taps["b"], (8, 8))], axis=-1)
    # torch AvgPool2d(3, 1, 1) counts the zero padding: a uniform filter over a zero-padded map.
    expected = scipy.ndimage.uniform_filter(up, size=(1, 3, 3, 1), mode="constant", cval=0.0)
    assert got.shape == (2, 8, 8, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _mask_options(**overrides):
    options = {
        "threshold": 0.2,
        "min_exponent": 0,
        "max_exponent": 3,
        "anomaly_probability": 0.5,
        "rescale_empty": True,
    }
    options.update(overrides)
    return options


def test_perlin_masks_statistics():
    assert [anomaly_generator.max_exponent_for(s, s, 5) for s in (8, 16, 32, 64, 128)] == [2, 3, 4, 5, 5]
    assert anomaly_generator.max_exponent_for(16, 64, 5) == 3  # the shorter side rules
    draw = jax.jit(
        lambda k, **o: anomaly_generator.perlin_masks(k, 400, (16, 16), **o), static_argnames=tuple(_mask_options())
    )
    masks = np.asarray(draw(jax.random.key(0), **_mask_options()))
    assert masks.shape == (400, 16, 16) and set(np.unique(masks)) <= {0.0, 1.0}
    kept = masks.reshape(400, -1).any(axis=1)
    # Half the rows keep their mask; with the rescale no kept mask is empty.
    assert 0.42 < kept.mean() < 0.58
    coverage = masks[kept].mean()
    assert 0.1 < coverage < 0.6
    # A higher threshold covers less of each kept mask.
    high = np.asarray(draw(jax.random.key(0), **_mask_options(threshold=0.6)))
    assert high[high.reshape(400, -1).any(axis=1)].mean() < coverage
    # Without the rescale (the original code) some kept fields never pass the threshold.
    plain = np.asarray(draw(jax.random.key(0), **_mask_options(rescale_empty=False, threshold=0.6)))
    assert plain.reshape(400, -1).any(axis=1).mean() < kept.mean()
    # Never / always kept.
    assert not np.asarray(draw(jax.random.key(1), **_mask_options(anomaly_probability=0.0))).any()
    always = np.asarray(draw(jax.random.key(1), **_mask_options(anomaly_probability=1.0)))
    assert always.reshape(400, -1).any(axis=1).all()
    # A function of its key only.
    np.testing.assert_array_equal(np.asarray(draw(jax.random.key(0), **_mask_options())), masks)


def tiny_ssn(**sections):
    config = tiny.get_config("supersimplenet")
    for section, values in sections.items():
        config[section].update(values)
    return config, detectors.build(config)


def _batch(seed=0, b=4, size=32):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(size=(b, size, size, 1)), jnp.float32)}


def test_supervised_batch_targets():
    config, _ = tiny_ssn()
    gen = config.anomaly_generator
    batch = _batch()
    mask = np.zeros((4, 32, 32), np.float32)
    mask[1, 8:20, 4:16] = 1.0  # tile 1: a real anomaly, 3 x 3 feature pixels (stride 4)
    mask[2, 0:1, 0:1] = 1.0  # tile 2: a single pixel, below half a feature pixel: no target
    supervised = {**batch, "mask": jnp.asarray(mask), "label": jnp.asarray([0, 1, 1, -1], jnp.int32)}
    key = jax.random.key(3)
    gen.anomaly_probability = 1.0  # every row gets a Perlin mask, to see where the noise may go
    noise_mask, target_masks, target_labels = map(np.asarray, steps.synthetic_targets(key, supervised, (8, 8), gen))
    assert noise_mask.shape == target_masks.shape == (8, 8, 8) and target_labels.shape == (8,)
    real = np.zeros((8, 8), np.float32)
    real[2:5, 1:4] = 1.0
    for row in (1, 5):  # tile 1 and its duplicate
        assert not (noise_mask[row] * real).any()  # no noise inside the real mask
        np.testing.assert_array_equal(target_masks[row], np.maximum(real, noise_mask[row]))
    # Labelled anomalous tiles are positives; every row here has noise, so all are.
    assert target_labels.tolist() == [1.0] * 8
    # The same rows without a real mask carry the same Perlin noise (the key decides it).
    unsup_noise, _, _ = map(np.asarray, steps.synthetic_targets(key, batch, (8, 8), gen))
    np.testing.assert_array_equal(noise_mask[1], unsup_noise[1] * (1 - real))
    # The [b, P, P, 1] layout of the shared batches gives the same targets.
    layout = {**supervised, "mask": jnp.asarray(mask[..., None])}
    np.testing.assert_array_equal(np.asarray(steps.synthetic_targets(key, layout, (8, 8), gen)[1]), target_masks)

    # noise_on_labelled_anomalies off: labelled anomalous tiles get no synthetic noise at all,
    # stay positives with their real masks; tile 2 (label 1, no pixel on the grid) is a positive
    # with an empty mask, as the references keep it.
    gen.noise_on_labelled_anomalies = False
    noise_mask, target_masks, target_labels = map(np.asarray, steps.synthetic_targets(key, supervised, (8, 8), gen))
    for row in (1, 2, 5, 6):
        assert not noise_mask[row].any()
    np.testing.assert_array_equal(target_masks[1], real)
    assert not target_masks[2].any()
    assert target_labels[[1, 2, 5, 6]].tolist() == [1.0] * 4
    assert noise_mask[[0, 3, 4, 7]].reshape(4, -1).any(axis=1).all()  # label 0 and -1: normal, noised

    # A mask alone: the label follows it; a label alone is refused (anomalib refuses it too).
    _, _, labels = steps.synthetic_targets(key, {**batch, "mask": jnp.asarray(mask)}, (8, 8), gen)
    assert np.asarray(labels)[[0, 1, 2, 3]].tolist() == [1.0] * 4  # every row noised (probability 1)
    gen.anomaly_probability = 0.0
    _, _, labels = steps.synthetic_targets(key, {**batch, "mask": jnp.asarray(mask)}, (8, 8), gen)
    assert np.asarray(labels).tolist() == [0.0, 1.0, 0.0, 0.0] * 2
    with pytest.raises(ValueError, match="needs 'mask'"):
        steps.synthetic_targets(key, {**batch, "label": jnp.zeros(4, jnp.int32)}, (8, 8), gen)


@functools.cache
def _tiny_variables():
    """Initialised variables with the pretrained backbone, once per session: every tiny detector
    here has the same architecture (only learning rates and the score differ), and an init
    (Lite0 included) costs more than the steps that use it."""
    _, detector = tiny_ssn()
    return detector.pretrained(jax.jit(detector.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1), jnp.float32)))


def _state(detector):
    return TrainState.create(_tiny_variables(), detector.optimizer)


def test_shapes_and_the_map_max_score():
    config, detector = tiny_ssn(model={"image_score": "map_max"})
    batch = _batch()
    state = _state(detector)
    channels = 40 + 80  # Lite0 stage3 + stage4
    params = state.params
    assert params["adaptor"]["projection"]["kernel"].shape == (channels, channels)
    assert params["seg_head"]["conv1"]["kernel"].shape == (channels, config.model.seg_hidden)
    assert "bias" not in params["seg_head"]["conv2"]
    assert params["cls_head"]["conv"]["kernel"].shape == (5, 5, channels + 1, config.model.cls_channels)
    assert params["cls_head"]["fc"]["kernel"].shape == (2 * config.model.cls_channels + 2, 1)
    assert detector.size_multiple == 16 and detector.labelled_anomalies
    out = jax.jit(detector.anomaly_map)(state.variables, batch["image"])
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    np.testing.assert_allclose(np.asarray(out["score"]), np.asarray(out["map"]).max(axis=(1, 2)), rtol=1e-6)
    with pytest.raises(errors.ConfigError, match="image_score"):
        tiny_ssn(model={"image_score": "sigmoid"})


def test_supervised_training_lowers_the_loss_and_is_deterministic():
    """A batch with a real anomaly (mask + label) and clean tiles; the same key every step gives
    the same synthetic targets, so the loss is comparable between steps."""
    _, detector = tiny_ssn(optim={"adaptor_lr": 1e-3, "head_lr": 2e-3})
    batch = _batch(1)
    mask = np.zeros((4, 32, 32, 1), np.float32)
    mask[0, 4:20, 4:20] = 1.0
    batch = {**batch, "mask": jnp.asarray(mask), "label": jnp.asarray([1, 0, 0, 0], jnp.int32)}
    step = jax.jit(lambda s, k: detector.train_step(s, batch, k, None))
    key = jax.random.key(7)  # the same key every step

    def run(key, steps_):
        state, losses = _state(detector), []
        for _ in range(steps_):
            state, metrics = step(state, key)
            assert all(np.isfinite(float(v)) for v in metrics.values())
            losses.append(float(metrics["loss"]))
        return state, losses

    initial = _state(detector)
    state, losses = run(key, 25)
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 25
    # The BatchNorm statistics of both heads moved; the frozen backbone did not.
    for head in ("seg_head", "cls_head"):
        before = initial.collections["batch_stats"][head]["bn"]["mean"]
        assert not np.allclose(state.collections["batch_stats"][head]["bn"]["mean"], before)
    jax.tree.map(np.testing.assert_array_equal, state.collections["backbone"], initial.collections["backbone"])
    # Deterministic given the key; another key draws other masks and noise.
    again, losses_again = run(key, 25)
    assert losses_again == losses
    jax.tree.map(np.testing.assert_array_equal, again.params, state.params)
    _, other = run(jax.random.key(8), 3)
    assert other[:3] != losses[:3]
    # The classification logit is the image score, not the map's maximum.
    out = jax.jit(detector.anomaly_map)(state.variables, batch["image"])
    assert out["map"].shape == (4, 32, 32) and out["score"].shape == (4,)
    assert np.all(np.isfinite(np.asarray(out["score"])))
    assert not np.allclose(np.asarray(out["score"]), np.asarray(out["map"]).max(axis=(1, 2)))


def test_optimizer_groups_and_milestones():
    config, _ = tiny_ssn()
    optim = config.optim
    optim.milestones = (0.5, 0.75)
    tx = steps.make_optimizer(optim, num_steps=8)
    # Large parameters make the heads' small decay (1e-5) visible above float32's bias correction.
    params = {k: {"w": jnp.full((3,), 100.0)} for k in ("adaptor", "seg_head", "cls_head")}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    for step in range(8):
        updates, state = tx.update(grads, state, params)
        # torch AdamW with a constant gradient: adam's direction is 1 / (1 + eps) at every step;
        # the decay lr * wd * p; the rate x0.4 from step 4 and x0.16 from step 6.
        factor = 1.0 if step < 4 else (0.4 if step < 6 else 0.16)
        for name, lr, wd in (
            ("adaptor", optim.adaptor_lr, optim.adaptor_weight_decay),
            ("seg_head", optim.head_lr, optim.head_weight_decay),
            ("cls_head", optim.head_lr, optim.head_weight_decay),
        ):
            expected = -lr * factor * (1.0 / (1.0 + optim.eps) + wd * 100.0)
            np.testing.assert_allclose(np.asarray(updates[name]["w"]), expected, rtol=1e-4)
    optim.grad_clip_norm = 1.0
    clipped = steps.make_optimizer(optim, num_steps=8)
    updates, _ = clipped.update(jax.tree.map(lambda g: 100 * g, grads), clipped.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates["adaptor"]["w"])))


@pytest.mark.skipif(not os.path.exists(PEER_PYTHON), reason="the peer venv (torch + anomalib 2.7) is absent")
def test_modules_equal_anomalib(tmp_path):
    """anomalib 2.7's modules with the same weights (benchmarks/peer/supersimplenet_torch_reference.py)."""
    out = tmp_path / "ref.npz"
    script = os.path.join(REPO, "benchmarks", "peer", "supersimplenet_torch_reference.py")
    result = subprocess.run([PEER_PYTHON, script, str(out)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"the peer venv lacks a module: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    ref = dict(np.load(out))
    nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))  # noqa: E731

    taps = {"layer2": jnp.asarray(nhwc(ref["tap_layer2"])), "layer3": jnp.asarray(nhwc(ref["tap_layer3"]))}
    features = network.upscaled_features(taps, ("layer2", "layer3"))
    np.testing.assert_allclose(np.asarray(features), nhwc(ref["features"]), atol=1e-5)

    sd = {k[3:]: v for k, v in ref.items() if k.startswith("sd/")}
    dense = lambda w: w[:, :, 0, 0].T  # noqa: E731  (out, in, 1, 1) -> (in, out)

    def bn(prefix):
        params = {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}
        return params, {"mean": sd[f"{prefix}.running_mean"], "var": sd[f"{prefix}.running_var"]}

    seg_bn, seg_stats = bn("segdec.seg_head.1")
    cls_bn, cls_stats = bn("segdec.cls_conv.1")
    params = {
        "adaptor": {
            "projection": {"kernel": dense(sd["adaptor.projection.weight"]), "bias": sd["adaptor.projection.bias"]}
        },
        "seg_head": {
            "conv1": {"kernel": dense(sd["segdec.seg_head.0.weight"]), "bias": sd["segdec.seg_head.0.bias"]},
            "bn": seg_bn,
            "conv2": {"kernel": dense(sd["segdec.seg_head.3.weight"])},
        },
        "cls_head": {
            "conv": {
                "kernel": np.transpose(sd["segdec.cls_conv.0.weight"], (2, 3, 1, 0)),
                "bias": sd["segdec.cls_conv.0.bias"],
            },
            "bn": cls_bn,
            "fc": {"kernel": sd["segdec.cls_fc.weight"].T, "bias": sd["segdec.cls_fc.bias"]},
        },
    }
    stats = {"seg_head": {"bn": seg_stats}, "cls_head": {"bn": cls_stats}}
    modules = {
        "adaptor": network.Adaptor(),
        "seg_head": network.SegmentationHead(hidden=1024),
        "cls_head": network.ClassificationHead(channels=128, kernel=5, stop_grad=True),
    }
    ours_adapted = modules["adaptor"].apply({"params": params["adaptor"]}, jnp.asarray(nhwc(ref["features"])))
    np.testing.assert_allclose(np.asarray(ours_adapted), nhwc(ref["adapted"]), atol=1e-4)
    adapted = jnp.asarray(nhwc(ref["adapted"]))
    for train, suffix in ((False, "eval"), (True, "train")):
        map_logits, score, _ = steps._heads(modules, params, stats, adapted, adapted, train=train)
        np.testing.assert_allclose(np.asarray(map_logits), ref[f"map_{suffix}"][:, 0], atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(score), ref[f"score_{suffix}"], atol=2e-4, rtol=1e-4)

    final = gaussian_blur(upsample_bilinear(jnp.asarray(ref["map_eval"][:, 0]), (64, 64)), 4.0, 25)
    np.testing.assert_allclose(np.asarray(final), ref["final_map"][:, 0], atol=1e-4)

    masks, _ = steps.real_targets({"image": jnp.zeros((2, 64, 64, 1)), "mask": jnp.asarray(ref["masks"])}, (16, 16))
    np.testing.assert_array_equal(np.asarray(masks), ref["masks_down"][:, 0])

    logits, scores = jnp.asarray(ref["loss_logits"][:, 0]), jnp.asarray(ref["loss_scores"])
    for target_masks, target_labels, name in (
        (ref["loss_masks"][:, 0], ref["loss_labels"], "loss"),
        (np.zeros_like(ref["loss_masks"][:, 0]), np.zeros_like(ref["loss_labels"]), "loss_normal_only"),
    ):
        total, _ = ssn_loss.supersimplenet_loss(
            logits, scores, jnp.asarray(target_masks), jnp.asarray(target_labels), gamma=4.0, alpha=-1.0, truncation=0.5
        )
        np.testing.assert_allclose(float(total), float(ref[name]), rtol=1e-5)
