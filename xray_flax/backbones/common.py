"""Helpers any backbone converted from PyTorch can share: input normalisation, torch-exact
padding, torch's initialisation, and a state-dict -> Flax variables converter.

Nothing here knows one network: a backbone module supplies the map from its Flax module path
to the PyTorch module name (e.g. ``("layer1_0", "conv1") -> "layer1.0.conv1"``) and the rest
(leaf names, layouts, shape checks, timm's grey fold) is the same for every network.

Layouts. PyTorch stores a convolution weight OIHW and a linear weight [out, in]; Flax (NHWC)
wants HWIO and [in, out]. A depthwise torch weight (C, 1, k, k) becomes (k, k, 1, C), which is
what ``nn.Conv(feature_group_count=C)`` holds, so the one rule covers grouped convolutions too.

Leaf names. torch ``weight`` of a conv/linear -> Flax ``kernel``; BatchNorm ``weight``/``bias``
-> ``scale``/``bias`` in ``params``; ``running_mean``/``running_var`` -> ``mean``/``var`` in
``batch_stats``; ``num_batches_tracked`` has no Flax counterpart and is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ImageNet input statistics for images in [0, 1], torchvision's and timm's (both train the
# ResNets and EfficientNet-B5 with them). [torchvision]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision ResNet / EfficientNet initialise convolutions with
# kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (out_channels * k * k)),
# not truncated. jax's "fan_out" for an HWIO kernel is O * H * W, the same number. [torchvision]
torch_kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def input_statistics(
    mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD, *, folded: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) the network's input is normalised with.

    Folded grey input (one channel into a network whose first conv had its RGB weights summed)
    uses the mean of the per-channel means and of the stds. That is not the same as
    replicating the grey channel three times and normalising each copy with its own
    statistics: replicate gives sum_c w_c (x - m_c) / s_c, fold gives (sum_c w_c)(x - m)/s,
    equal only when the three means and the three stds are equal. [ours; timm's
    adapt_input_conv folds the weights and leaves the statistics to the user]
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if folded:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return mean, std


def normalise_input(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """(images - mean) / std per channel; images [..., C] with C == len(mean)."""
    if images.shape[-1] != len(mean):
        raise ValueError(f"normalise_input: {images.shape[-1]} channels but statistics for {len(mean)}")
    mean = jnp.asarray(mean, images.dtype)
    std = jnp.asarray(std, images.dtype)
    return (images - mean) / std


def torch_padding(padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch's symmetric `padding=p` for NHWC spatial axes.

    Not 'SAME': for a stride-2 3x3 conv on an even input 'SAME' pads (0, 1), torch pads (1, 1),
    so every output pixel would be shifted by one input pixel.
    """
    return ((padding, padding), (padding, padding))


def max_pool_torch(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """torch.nn.MaxPool2d(window, stride, padding): padded positions are -inf, never chosen.

    ``nn.max_pool`` pads with the reduction's initial value, -inf, so explicit padding is
    already torch's rule (zero padding would differ on negative inputs).
    """
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=torch_padding(padding))


# Flax leaf name (by collection) -> torch tensor name.
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_leaf_name(collection: str, leaf: str) -> str:
    try:
        return _TORCH_LEAF[(collection, leaf)]
    except KeyError:
        raise ValueError(f"no torch name for Flax leaf {collection}/{leaf}") from None


def torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """The torch shape of a Flax leaf: HWIO kernel -> OIHW, [in, out] kernel -> [out, in]."""
    flax_shape = tuple(int(d) for d in flax_shape)
    if leaf == "kernel" and len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if leaf == "kernel" and len(flax_shape) == 2:
        return flax_shape[::-1]
    return flax_shape


def from_torch(array: np.ndarray, leaf: str) -> np.ndarray:
    """A torch tensor (numpy) in the Flax layout of `leaf`, float32."""
    array = np.asarray(array, dtype=np.float32)
    if leaf == "kernel" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if leaf == "kernel" and array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def fold_input_conv(kernel_hwio: np.ndarray) -> np.ndarray:
    """An RGB first-conv kernel [kh, kw, 3, O] for grey input: summed over its input channels.

    timm's ``adapt_input_conv(in_chans=1)`` rule (``weight.sum(dim=1, keepdim=True)``): a grey
    image x gives the same output as the RGB image (x, x, x) through the original weights,
    before input normalisation (see `input_statistics` for what that changes). [timm]
    """
    if kernel_hwio.ndim != 4 or kernel_hwio.shape[2] != 3:
        raise ValueError(f"fold_input_conv expects an HWIO kernel with 3 input channels, got {kernel_hwio.shape}")
    return kernel_hwio.sum(axis=2, keepdims=True)


def flax_leaves(shapes: dict) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """(collection, path, shape) of every leaf of a variables (or shapes) tree, sorted."""
    out = []
    for collection, tree in shapes.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            names = tuple(getattr(p, "key", getattr(p, "name", str(p))) for p in path)
            out.append((collection, names, tuple(leaf.shape)))
    return sorted(out)


def expected_state_dict(
    shapes: dict,
    module_key: Callable[[tuple[str, ...]], str],
    *,
    fold_key: str | None = None,
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (collection, Flax path, torch shape in the file) for a variables tree.

    `module_key` maps a Flax module path (the leaf name dropped) to the torch module name.
    `fold_key`: the torch key of a first conv whose Flax kernel has 1 input channel because
    it is folded (`fold_input_conv`); the file holds it with 3.
    """
    expected = {}
    for collection, path, shape in flax_leaves(shapes):
        key = f"{module_key(path[:-1])}.{torch_leaf_name(collection, path[-1])}"
        tshape = torch_shape(shape, path[-1])
        if key == fold_key:
            tshape = (tshape[0], 3, *tshape[2:])
        if key in expected:
            raise ValueError(f"two Flax leaves map to the torch key {key!r}")
        expected[key] = (collection, path, tshape)
    return expected


def variables_from_state_dict(
    state: dict[str, np.ndarray],
    expected: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]],
    *,
    fold_key: str | None = None,
) -> dict:
    """The Flax variables tree (numpy float32) from a checked state dict.

    `expected` comes from `expected_state_dict`; the state dict must already have passed
    `xray_flax.weights.check_state_dict` against its shapes (every expected key present with
    that shape), so this only converts.
    """
    variables: dict = {}
    for key, (collection, path, _) in expected.items():
        array = from_torch(state[key], path[-1])
        if key == fold_key:
            array = fold_input_conv(array)
        node = variables.setdefault(collection, {})
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = array
    return variables


def count_params(variables: dict, collection: str = "params") -> int:
    """Number of scalars in one collection (torch's sum(p.numel() for p in parameters()))."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get(collection, {}))))
