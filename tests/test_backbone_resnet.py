"""ResNet-18 / Wide-ResNet-50-2 backbones (xray_flax/backbones/resnet.py) against NumPy references.

The reference network below works on a state dict in torchvision's own layout (OIHW kernels,
torch key names), written independently of the converter, so a wrong transpose, key map,
padding or stride shows up as a mismatch. The comparison with torch itself is
benchmarks/peer/compare_resnet_taps.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax import weights as weights_io
from xray_flax.backbones import base, common, resnet

# torchvision's published parameter counts (sum of numel over model.parameters()).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "wide_resnet50_2": 68_883_240}
FC_IN = {"resnet18": 512, "wide_resnet50_2": 2048}
EPS = 1e-5


# ---------------------------------------------------------------- torchvision-layout state dicts


def _bn_state(rng, state, prefix, c):
    # Non-trivial statistics, so a swapped mean/var or scale/bias cannot pass.
    state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{prefix}.bias"] = rng.normal(0.0, 0.2, c).astype(np.float32)
    state[f"{prefix}.running_mean"] = rng.normal(0.0, 0.3, c).astype(np.float32)
    state[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    state[f"{prefix}.num_batches_tracked"] = np.array(12, np.int64)


def _conv_state(rng, state, key, out, inp, k):
    state[f"{key}.weight"] = rng.normal(0.0, np.sqrt(2.0 / (out * k * k)), (out, inp, k, k)).astype(np.float32)


def resnet18_state(seed=0, stages=4, fc=True):
    """A torchvision resnet18 state dict (key names and OIHW shapes) of random numbers."""
    rng = np.random.default_rng(seed)
    state = {}
    _conv_state(rng, state, "conv1", 64, 3, 7)
    _bn_state(rng, state, "bn1", 64)
    inplanes = 64
    for layer, (planes, stride) in enumerate(zip((64, 128, 256, 512)[:stages], (1, 2, 2, 2)), 1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            _conv_state(rng, state, f"{p}.conv1", planes, inplanes if b == 0 else planes, 3)
            _bn_state(rng, state, f"{p}.bn1", planes)
            _conv_state(rng, state, f"{p}.conv2", planes, planes, 3)
            _bn_state(rng, state, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes):
                _conv_state(rng, state, f"{p}.downsample.0", planes, inplanes, 1)
                _bn_state(rng, state, f"{p}.downsample.1", planes)
        inplanes = planes
    if fc:
        state["fc.weight"] = rng.normal(0, 0.01, (1000, 512)).astype(np.float32)
        state["fc.bias"] = np.zeros(1000, np.float32)
    return state


def torch_param_count(state):
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.size for k, v in state.items() if not k.endswith(skip))


# ---------------------------------------------------------------- NumPy reference (float64, NHWC)


def np_conv(x, w_oihw, stride, pad):
    """torch.nn.Conv2d(bias=False): zero padding `pad` each side; loops over kernel offsets."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    _, h, w, _ = x.shape
    o, _, kh, kw = w_oihw.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
            out += np.einsum("bhwi,oi->bhwo", patch, w_oihw[:, :, i, j].astype(np.float64))
    return out


def np_bn(x, state, prefix):
    g = lambda n: state[f"{prefix}.{n}"].astype(np.float64)  # noqa: E731
    return (x - g("running_mean")) / np.sqrt(g("running_var") + EPS) * g("weight") + g("bias")


def np_max_pool(x, k=3, stride=2, pad=1):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    _, h, w, _ = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    windows = [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(k)
        for j in range(k)
    ]
    return np.max(windows, axis=0)


relu = lambda x: np.maximum(x, 0.0)  # noqa: E731


def np_basic_block(x, state, p, stride):
    y = relu(np_bn(np_conv(x, state[f"{p}.conv1.weight"], stride, 1), state, f"{p}.bn1"))
    y = np_bn(np_conv(y, state[f"{p}.conv2.weight"], 1, 1), state, f"{p}.bn2")
    if f"{p}.downsample.0.weight" in state:
        x = np_bn(np_conv(x, state[f"{p}.downsample.0.weight"], stride, 0), state, f"{p}.downsample.1")
    return relu(y + x)


def np_bottleneck(x, state, p, stride):
    y = relu(np_bn(np_conv(x, state[f"{p}.conv1.weight"], 1, 0), state, f"{p}.bn1"))
    y = relu(np_bn(np_conv(y, state[f"{p}.conv2.weight"], stride, 1), state, f"{p}.bn2"))  # V1.5
    y = np_bn(np_conv(y, state[f"{p}.conv3.weight"], 1, 0), state, f"{p}.bn3")
    if f"{p}.downsample.0.weight" in state:
        x = np_bn(np_conv(x, state[f"{p}.downsample.0.weight"], stride, 0), state, f"{p}.downsample.1")
    return relu(y + x)


def np_resnet18(state, images):
    """All taps of torchvision's resnet18 (eval mode) on images [B, H, W, 3] in [0, 1]."""
    x = (images.astype(np.float64) - np.array(common.IMAGENET_MEAN)) / np.array(common.IMAGENET_STD)
    taps = {"stem": relu(np_bn(np_conv(x, state["conv1.weight"], 2, 3), state, "bn1"))}
    x = taps["pool"] = np_max_pool(taps["stem"])
    for layer, stride in zip(range(1, 5), (1, 2, 2, 2)):
        for b in range(2):
            x = np_basic_block(x, state, f"layer{layer}.{b}", stride if b == 0 else 1)
        taps[f"layer{layer}"] = x
    return taps


def assert_close(ours, ref, tol=1e-5, what=""):
    ours = np.asarray(ours, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} (reference max {scale:.3g})"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def state18():
    return resnet18_state(seed=0)


@pytest.fixture(scope="module")
def files18(state18, tmp_path_factory):
    d = tmp_path_factory.mktemp("resnet18")
    paths = {"safetensors": str(d / "resnet18.safetensors"), "torch_zip": str(d / "resnet18.pth")}
    weights_io.save_safetensors(state18, paths["safetensors"])
    weights_io.save_torch_zip(state18, paths["torch_zip"])
    return paths


def images(shape, seed=1):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


# ---------------------------------------------------------------- (1) acceptance: file -> load -> taps


@pytest.mark.parametrize(
    "fmt,taps",
    [("safetensors", resnet.TAPS), ("torch_zip", ("pool", "layer1", "layer2"))],  # deeper keys + fc ignored
)
def test_resnet18_from_file_matches_numpy_reference(state18, files18, fmt, taps):
    assert torch_param_count(state18) == TORCHVISION_PARAMS["resnet18"]  # the generated file is torchvision's
    backbone = resnet.build("resnet18", taps, input_channels=3, grey="replicate", weights=files18[fmt])
    variables = backbone.load()
    x = images((2, 40, 36, 3))  # odd sizes deeper down (36 -> 18 -> 9 -> 5 -> 3 -> 2): torch's floor rule
    ours = jax.jit(backbone.features)(variables, x)
    ref = np_resnet18(state18, x)
    assert sorted(ours) == sorted(taps)
    for tap in taps:
        assert_close(ours[tap], ref[tap], what=f"{fmt} {tap}")
    # The layer2.0 BasicBlock (stride 2 + downsample) on its own, fed the reference's layer1.
    block = resnet.BasicBlock(128, stride=2, downsample=True)
    sub = {c: variables[c]["layer2_0"] for c in ("params", "batch_stats")}
    y = block.apply(sub, jnp.asarray(ref["layer1"], jnp.float32))
    assert_close(y, np_basic_block(ref["layer1"], state18, "layer2.0", 2), what="layer2.0 block")


def test_bottleneck_block_matches_numpy_reference():
    """Bottleneck V1.5 (stride on the 3x3) with a projection shortcut, converted from torch layout."""
    block = resnet.Bottleneck(planes=8, width=16, stride=2, downsample=True)
    x = images((2, 9, 10, 12), seed=3) - 0.5
    shapes = jax.eval_shape(block.init, jax.random.key(0), jnp.asarray(x))
    expected = common.expected_state_dict(shapes, resnet.torch_module_key)
    convs, bns = ("conv1", "conv2", "conv3", "downsample.0"), ("bn1", "bn2", "bn3", "downsample.1")
    stats = ("weight", "bias", "running_mean", "running_var")
    assert set(expected) == {f"{m}.weight" for m in convs} | {f"{m}.{t}" for m in bns for t in stats}
    rng = np.random.default_rng(4)
    state = {}
    for key, (_, _, shape) in expected.items():
        if key.rsplit(".", 1)[0] in bns:
            continue
        _conv_state(rng, state, key[: -len(".weight")], *shape[:2], shape[2])
    for prefix, c in (("bn1", 16), ("bn2", 16), ("bn3", 32), ("downsample.1", 32)):
        _bn_state(rng, state, prefix, c)
    assert state["conv2.weight"].shape == (16, 16, 3, 3) and state["conv3.weight"].shape == (32, 16, 1, 1)
    variables = common.variables_from_state_dict(state, expected)
    ref = np_bottleneck(x, {f"block.{k}": v for k, v in state.items()}, "block", 2)
    assert_close(block.apply(variables, jnp.asarray(x)), ref, what="bottleneck")


# ---------------------------------------------------------------- (2) taps, strides, parameter counts


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2"])
def test_taps_strides_and_parameter_counts(name):
    full = resnet.build(name, resnet.TAPS, input_channels=3, grey="replicate", weights="")
    sample = jnp.zeros((1, 64, 96, 3))
    shapes = jax.eval_shape(full.init, jax.random.key(0), sample)
    out = jax.eval_shape(full.features, shapes, jnp.zeros((2, 64, 96, 3)))
    for tap in resnet.TAPS:
        s = full.strides[tap]
        assert out[tap].shape == (2, 64 // s, 96 // s, full.channels[tap]), tap
    assert [full.strides[t] for t in resnet.TAPS] == [2, 4, 4, 8, 16, 32]
    expected_channels = {"resnet18": [64, 64, 64, 128, 256, 512], "wide_resnet50_2": [64, 64, 256, 512, 1024, 2048]}
    assert [full.channels[t] for t in resnet.TAPS] == expected_channels[name]
    fc = FC_IN[name] * 1000 + 1000
    assert common.count_params(shapes) + fc == TORCHVISION_PARAMS[name]
    # Stopping at layer3: no layer4 variables at all, and only the requested taps come back.
    part = resnet.build(name, ("layer1", "layer3"), input_channels=3, grey="replicate", weights="")
    part_shapes = jax.eval_shape(part.init, jax.random.key(0), sample)
    for collection in ("params", "batch_stats"):
        assert not [k for k in part_shapes[collection] if k.startswith("layer4")]
        assert [k for k in shapes[collection] if k.startswith("layer4")]
    layer4 = sum(
        int(np.prod(v.shape)) for k, t in shapes["params"].items() if k.startswith("layer4") for v in jax.tree.leaves(t)
    )
    assert common.count_params(part_shapes) == common.count_params(shapes) - layer4
    assert sorted(jax.eval_shape(part.features, part_shapes, sample)) == ["layer1", "layer3"]
    # The file keys the converter expects are exactly torchvision's, less fc and num_batches_tracked.
    expected = common.expected_state_dict(shapes, resnet.torch_module_key)
    n_keys = {"resnet18": 122, "wide_resnet50_2": 320}[name]  # len(torchvision state_dict())
    n_bns = sum(1 for k in expected if k.endswith(".running_mean"))
    assert len(expected) + n_bns + 2 == n_keys  # + num_batches_tracked per BN + fc.weight, fc.bias


def test_random_init_is_torchvision_s():
    backbone = resnet.build("resnet18", ("layer1",), input_channels=3, grey="replicate", weights="")
    v = jax.jit(backbone.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    k = np.asarray(v["params"]["layer1_1"]["conv2"]["kernel"])  # 3x3, 64 -> 64
    assert abs(k.std() / np.sqrt(2.0 / (64 * 9)) - 1) < 0.02  # kaiming normal, fan_out
    assert abs(k.mean()) < 1e-3 and np.abs(k).max() > 3.5 * k.std()  # a plain, not truncated, normal
    bn = v["params"]["layer1_1"]["bn2"]
    assert np.all(np.asarray(bn["scale"]) == 1) and np.all(np.asarray(bn["bias"]) == 0)
    stats = v["batch_stats"]["layer1_1"]["bn2"]
    assert np.all(np.asarray(stats["mean"]) == 0) and np.all(np.asarray(stats["var"]) == 1)


# ---------------------------------------------------------------- torch semantics of the pieces


def test_max_pool_pads_with_minus_infinity():
    x = -images((2, 7, 8, 3), seed=5) - 1.0  # all negative: zero padding would show up on the border
    assert_close(common.max_pool_torch(jnp.asarray(x), 3, 2, 1), np_max_pool(x), tol=0, what="maxpool")


def test_train_mode_uses_batch_statistics(state18, files18):
    backbone = resnet.build("resnet18", ("stem",), input_channels=3, grey="replicate", weights=files18["safetensors"])
    variables = backbone.load()
    x = images((2, 16, 20, 3), seed=6)
    out, updates = backbone.module.apply(variables, backbone.preprocess(x), train=True, mutable=["batch_stats"])
    z = (x.astype(np.float64) - np.array(common.IMAGENET_MEAN)) / np.array(common.IMAGENET_STD)
    c = np_conv(z, state18["conv1.weight"], 2, 3)
    mean, var = c.mean(axis=(0, 1, 2)), c.var(axis=(0, 1, 2))
    ref = relu((c - mean) / np.sqrt(var + EPS) * state18["bn1.weight"] + state18["bn1.bias"])
    assert_close(out["stem"], ref, tol=1e-4, what="train-mode stem")
    new = updates["batch_stats"]["bn1"]
    assert_close(new["mean"], 0.9 * state18["bn1.running_mean"] + 0.1 * mean, what="running mean (momentum 0.1)")
    assert_close(new["var"], 0.9 * state18["bn1.running_var"] + 0.1 * var, what="running var")


# ---------------------------------------------------------------- (3) file errors


def test_missing_misshaped_and_unconfigured_weights(tmp_path):
    state = resnet18_state(seed=2, stages=2)  # conv1..layer2 + fc: layer2 and fc are ignored for layer1
    backbone = lambda path: resnet.build("resnet18", ("layer1",), 3, "replicate", path)  # noqa: E731
    good = str(tmp_path / "good.safetensors")
    weights_io.save_safetensors(state, good)
    assert set(backbone(good).load()["params"]) == {"conv1", "bn1", "layer1_0", "layer1_1"}

    missing = dict(state)
    del missing["layer1.1.bn2.running_var"]
    path = str(tmp_path / "missing.safetensors")
    weights_io.save_safetensors(missing, path)
    with pytest.raises(weights_io.WeightsError, match=r"layer1\.1\.bn2\.running_var") as err:
        backbone(path).load()
    assert path in str(err.value)

    bad = dict(state)
    bad["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 3), np.float32)
    path = str(tmp_path / "misshaped.pth")
    weights_io.save_torch_zip(bad, path)
    with pytest.raises(weights_io.WeightsError, match=r"layer1\.0\.conv2\.weight") as err:
        backbone(path).load()
    assert path in str(err.value)

    how = r"(?s)resnet18.*IMAGENET1K_V1.*resnet18\.a1_in1k.*--config\.backbone\.weights=PATH"
    with pytest.raises(weights_io.WeightsError, match=how):
        backbone("").load()
    with pytest.raises(weights_io.WeightsError, match=how):
        backbone(str(tmp_path / "absent.safetensors")).load()


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="config.backbone.taps"):
        resnet.build("resnet18", ("layer5",), 3, "replicate", "")
    with pytest.raises(ValueError, match="config.backbone.taps"):
        resnet.build("resnet18", ("layer2", "layer1"), 3, "replicate", "")
    with pytest.raises(ValueError, match="config.backbone.name"):
        resnet.build("resnet50", ("layer1",), 3, "replicate", "")


# ---------------------------------------------------------------- (4) grey input


def test_grey_fold_equals_replicate_only_with_equal_channel_statistics(state18, files18):
    taps = ("stem", "layer1")
    rep = resnet.build("resnet18", taps, input_channels=1, grey="replicate", weights=files18["safetensors"])
    fold = resnet.build("resnet18", taps, input_channels=1, grey="fold", weights=files18["safetensors"])
    v_rep, v_fold = rep.load(), fold.load()
    np.testing.assert_array_equal(
        v_fold["params"]["conv1"]["kernel"], state18["conv1.weight"].transpose(2, 3, 1, 0).sum(2, keepdims=True)
    )
    # init shapes agree with load: conv1 takes one channel when folded.
    init_shapes = jax.eval_shape(fold.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    assert jax.tree.map(lambda a: a.shape, init_shapes) == jax.tree.map(lambda a: a.shape, v_fold)
    x = images((2, 32, 28, 1), seed=7)
    run = jax.jit(lambda v, z: rep.module.apply(v, z, train=False))
    same = dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    a = run(v_rep, resnet.preprocess_images(x, "replicate", **same))
    b = run(v_fold, resnet.preprocess_images(x, "fold", **same))
    for tap in taps:
        assert_close(b[tap], np.asarray(a[tap], np.float64), what=f"fold vs replicate, equal statistics, {tap}")
    # With ImageNet's per-channel statistics they are different inputs (documented in common.py).
    a, b = rep.features(v_rep, x), fold.features(v_fold, x)
    assert float(jnp.abs(a["stem"] - b["stem"]).max()) > 1e-2
    assert fold.preprocess(x).shape[-1] == 1 and rep.preprocess(x).shape[-1] == 3


# ---------------------------------------------------------------- (5) frozen


def test_frozen_features_give_zero_gradients():
    backbone = resnet.build("resnet18", ("pool", "layer1"), input_channels=1, grey="replicate", weights="")
    x = jnp.asarray(images((2, 16, 16, 1), seed=8))
    variables = backbone.init(jax.random.key(1), x[:1])

    def loss(v, frozen):
        f = backbone.features(v, x)
        f = base.frozen(f) if frozen else f
        return sum(jnp.sum(t**2) for t in f.values())

    live = jax.grad(loss)(variables, False)
    assert float(jnp.abs(live["params"]["layer1_0"]["conv1"]["kernel"]).max()) > 0  # the check can fail
    grads = jax.grad(loss)(variables, True)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
