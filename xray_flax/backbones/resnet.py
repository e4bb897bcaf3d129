"""ResNet-18 and Wide-ResNet-50-2, torchvision's networks in Flax, as frozen feature backbones.

    name             block                    blocks per stage   width          params (with fc)
    resnet18         BasicBlock (3x3, 3x3)    2, 2, 2, 2         64..512        11,689,512
    wide_resnet50_2  Bottleneck (1x1,3x3,1x1) 3, 4, 6, 3         128..1024 x4   68,883,240

Taps (NHWC features) and their strides in input pixels:

    stem    after conv1 (7x7, stride 2, padding 3) - bn1 - relu      2    64 channels
    pool    after maxpool (3x3, stride 2, padding 1)                 4    64
    layer1  .. layer4, the ends of the four stages                   4, 8, 16, 32
            resnet18: 64, 128, 256, 512; wide_resnet50_2: 256, 512, 1024, 2048

The module computes only up to the deepest requested tap and creates only the parameters of
the stages it runs, so a detector that taps layer1-3 holds no layer4 or fc variables.

What is whose:
* the architecture is torchvision's ``resnet18`` / ``wide_resnet50_2`` (ResNet V1.5: the
  Bottleneck's stride is on its 3x3 conv; downsample = 1x1 conv with the block's stride + BN
  whenever the stride or the channel count changes; no zero-init of the last BN of each
  residual branch), timm's ``resnet18`` / ``wide_resnet50_2`` are the same modules under the
  same key names. [torchvision]
* BatchNorm eps 1e-5 and torch's momentum 0.1 (Flax's momentum 0.9 for the kept average).
  Inference (``train=False``) uses the running statistics. ``train=True`` normalises with
  batch statistics and updates ``batch_stats`` (STFPM's student: the same architecture
  trained from scratch). Flax keeps the biased batch variance as the running variance where
  torch keeps the unbiased one, a factor n/(n-1) with n = batch x height x width pixels, which
  matters only for tiny batches. [torchvision; the variance detail is Flax's]
* random initialisation: convolutions kaiming-normal fan_out (relu gain), BN weight 1 bias 0,
  running mean 0 var 1. [torchvision]
* padding exactly torch's (explicit 1 / 3 pixels each side, not 'SAME'; max-pool padding is
  -inf). [torchvision]
* input: images in [0, 1] normalised with the ImageNet mean/std; grey input either replicated
  to RGB or folded into conv1 (timm's ``adapt_input_conv``), see common.input_statistics for
  why fold and replicate differ. [torchvision, timm; both modes: ours]
* weights: a state dict file (safetensors, torch zip or legacy .pth) with torchvision/timm key
  names; there is no offline copy, so an empty ``config.backbone.weights`` is an error saying
  how to make the file. [ours]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax import errors
from xray_flax import weights as weights_io
from xray_flax.backbones import common
from xray_flax.backbones.base import Backbone, Variables, to_rgb_input

TAPS = ("stem", "pool", "layer1", "layer2", "layer3", "layer4")
STRIDES = {"stem": 2, "pool": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
_STAGE_PLANES = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BN_EPS = 1e-5  # torch.nn.BatchNorm2d default
_BN_MOMENTUM = 0.9  # Flax's decay of the running average == torch's momentum 0.1


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, int, int, int]  # blocks per stage
    width_per_group: int  # Bottleneck width = planes * width_per_group / 64 (torchvision)

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    def channels(self, tap: str) -> int:
        if tap in ("stem", "pool"):
            return 64
        return _STAGE_PLANES[int(tap[-1]) - 1] * self.expansion


SPECS = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2), 64),
    "wide_resnet50_2": ResNetSpec("bottleneck", (3, 4, 6, 3), 128),
}

# How to make the weights file on a machine with internet. [ours]
_TORCHVISION_CMD = (
    "python -c \"import torchvision, safetensors.torch as st; m = torchvision.models.{name}(weights='IMAGENET1K_V1'); "
    "st.save_file(m.state_dict(), '{name}.safetensors')\""
)
_TIMM_CMD = (
    "python -c \"import timm, safetensors.torch as st; m = timm.create_model('{timm}', pretrained=True); "
    "st.save_file(m.state_dict(), '{name}.safetensors')\""
)
_TIMM_NAMES = {"resnet18": "resnet18.a1_in1k", "wide_resnet50_2": "wide_resnet50_2.racm_in1k"}


def how_to_get(name: str) -> str:
    """The instructions printed when the weights file is not configured."""
    return (
        f"{name} ImageNet weights are not installed with the package (model hubs need internet). "
        f"On a machine with internet run\n  {_TORCHVISION_CMD.format(name=name)}\n"
        f"(torchvision V1, the papers' weights) or, for anomalib's timm weights,\n"
        f"  {_TIMM_CMD.format(name=name, timm=_TIMM_NAMES[name])}\n"
        f"copy the file here and pass --config.backbone.weights=PATH/{name}.safetensors"
    )


def _conv(features: int, kernel: int, stride: int, padding: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=common.torch_padding(padding),
        use_bias=False,
        kernel_init=common.torch_kaiming_normal_fan_out,
        name=name,
    )


def _bn(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name=name)


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3(stride) - BN - ReLU - 3x3 - BN, + shortcut, ReLU."""

    planes: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        identity = x
        y = nn.relu(_bn(train, "bn1")(_conv(self.planes, 3, self.stride, 1, "conv1")(x)))
        y = _bn(train, "bn2")(_conv(self.planes, 3, 1, 1, "conv2")(y))
        if self.downsample:
            identity = _bn(train, "downsample_bn")(_conv(self.planes, 1, self.stride, 0, "downsample_conv")(x))
        return nn.relu(y + identity)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (V1.5): 1x1 - BN - ReLU - 3x3(stride) - BN - ReLU - 1x1 (x4) - BN."""

    planes: int
    width: int  # planes * width_per_group / 64; 2 x planes for Wide-ResNet-50-2
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        identity = x
        y = nn.relu(_bn(train, "bn1")(_conv(self.width, 1, 1, 0, "conv1")(x)))
        y = nn.relu(_bn(train, "bn2")(_conv(self.width, 3, self.stride, 1, "conv2")(y)))
        y = _bn(train, "bn3")(_conv(self.planes * 4, 1, 1, 0, "conv3")(y))
        if self.downsample:
            identity = _bn(train, "downsample_bn")(_conv(self.planes * 4, 1, self.stride, 0, "downsample_conv")(x))
        return nn.relu(y + identity)


class ResNet(nn.Module):
    """The ResNet trunk up to the deepest of `taps`; returns {tap: NHWC features}.

    Input: the normalised network input [B, H, W, 3] (or 1 channel with a folded conv1).
    """

    spec: ResNetSpec
    taps: tuple[str, ...]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        deepest = max(TAPS.index(t) for t in self.taps)
        out = {}

        def tap(name: str, value: jax.Array) -> bool:
            if name in self.taps:
                out[name] = value
            return TAPS.index(name) >= deepest  # True: nothing deeper is needed

        x = nn.relu(_bn(train, "bn1")(_conv(64, 7, 2, 3, "conv1")(x)))
        if tap("stem", x):
            return out
        x = common.max_pool_torch(x, 3, 2, 1)
        if tap("pool", x):
            return out
        inplanes = 64
        for stage, (planes, blocks, stride) in enumerate(zip(_STAGE_PLANES, self.spec.layers, _STAGE_STRIDES)):
            for i in range(blocks):
                s = stride if i == 0 else 1
                # torchvision: a projection shortcut when the shape changes, only in block 0.
                down = i == 0 and (s != 1 or inplanes != planes * self.spec.expansion)
                name = f"layer{stage + 1}_{i}"
                if self.spec.block == "basic":
                    block = BasicBlock(planes, s, down, name=name)
                else:
                    width = planes * self.spec.width_per_group // 64
                    block = Bottleneck(planes, width, s, down, name=name)
                x = block(x, train)
                inplanes = planes * self.spec.expansion
            if tap(f"layer{stage + 1}", x):
                return out
        return out


def torch_module_key(path: tuple[str, ...]) -> str:
    """Flax module path -> torchvision module name: ("layer2_0", "downsample_conv") -> "layer2.0.downsample.0"."""
    parts = []
    for part in path:
        if part.startswith("layer"):
            parts.append(part.replace("_", "."))
        elif part.startswith("downsample_"):
            parts.append("downsample." + {"conv": "0", "bn": "1"}[part.split("_", 1)[1]])
        else:
            parts.append(part)
    return ".".join(parts)


def _ignored_keys(built_stages: int) -> Callable[[str], bool]:
    """Keys a torchvision/timm file may hold that these taps do not use: deeper stages, fc,
    BN's num_batches_tracked."""
    unused = {"fc"} | {f"layer{i}" for i in range(built_stages + 1, 5)}
    return lambda key: key.endswith("num_batches_tracked") or key.split(".", 1)[0] in unused


def _check_taps(name: str, taps: tuple[str, ...]) -> tuple[str, ...]:
    taps = tuple(taps)
    bad = [t for t in taps if t not in TAPS]
    if not taps or bad:
        raise errors.ConfigError(
            f"config.backbone.taps={taps!r}: {name} taps are {TAPS}" + (f"; unknown {bad}" if bad else "")
        )
    if len(set(taps)) != len(taps) or list(taps) != sorted(taps, key=TAPS.index):
        raise errors.ConfigError(f"config.backbone.taps={taps!r}: give each tap once, shallow to deep (order {TAPS})")
    return taps


def preprocess_images(
    images: jax.Array,
    grey: str,
    mean: tuple[float, ...] = common.IMAGENET_MEAN,
    std: tuple[float, ...] = common.IMAGENET_STD,
) -> jax.Array:
    """[B, H, W, 1 or 3] in [0, 1] -> the network input: grey rule, then per-channel normalisation.

    `mean`/`std` are arguments so tests can check that fold equals replicate when the three
    channels share their statistics; the backbone always uses ImageNet's.
    """
    x = to_rgb_input(images, grey)
    m, s = common.input_statistics(mean, std, folded=x.shape[-1] == 1)
    return common.normalise_input(x, m, s)


def build(name: str, taps: tuple[str, ...], input_channels: int, grey: str, weights: str) -> Backbone:
    """The `name` backbone (resnet18 | wide_resnet50_2) with `taps`, as backbones.base.Backbone."""
    if name not in SPECS:
        raise errors.ConfigError(f"config.backbone.name={name!r}: resnet.py builds {sorted(SPECS)}")
    if input_channels not in (1, 3):
        raise ValueError(f"{name}: images must have 1 (grey) or 3 (RGB) channels, got {input_channels}")
    spec = SPECS[name]
    taps = _check_taps(name, taps)
    folded = input_channels == 1 and grey == "fold"
    module = ResNet(spec, taps)
    built_stages = max(0, max(TAPS.index(t) for t in taps) - 1)  # layer k has index k + 1
    fold_key = "conv1.weight" if folded else None

    def preprocess(images: jax.Array) -> jax.Array:
        return preprocess_images(images, grey)

    def init(key: jax.Array, sample: jax.Array) -> Variables:
        return dict(module.init(key, preprocess(sample), train=False))

    def features(variables: Variables, images: jax.Array) -> dict[str, jax.Array]:
        return module.apply(variables, preprocess(images), train=False)

    def load() -> Variables:
        if not weights or not os.path.exists(weights):
            # Said once, with how to make the file: there is no offline copy of these weights.
            shown = weights or "(config.backbone.weights is empty)"
            raise weights_io.missing_weights_error(shown, how_to_get(name))
        sample = jnp.zeros((1, 64, 64, input_channels), jnp.float32)
        shapes = jax.eval_shape(init, jax.random.key(0), sample)
        expected = common.expected_state_dict(shapes, torch_module_key, fold_key=fold_key)
        state = weights_io.load_state_dict(weights)
        weights_io.check_state_dict(
            state, {k: v[2] for k, v in expected.items()}, weights, ignore=_ignored_keys(built_stages)
        )
        weights_io.assert_finite({k: state[k] for k in expected}, weights)
        return common.variables_from_state_dict(state, expected, fold_key=fold_key)

    return Backbone(
        name=name,
        taps=taps,
        channels={t: spec.channels(t) for t in taps},
        strides={t: STRIDES[t] for t in taps},
        module=module,
        preprocess=preprocess,
        init=init,
        load=load,
        features=features,
        weights=weights,
    )


__all__ = ["SPECS", "STRIDES", "TAPS", "BasicBlock", "Bottleneck", "ResNet", "build", "preprocess_images"]
