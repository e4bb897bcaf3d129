"""The trainable part of Reverse Distillation: the one-class bottleneck embedding (OCBE) and the
reversed-ResNet decoder (Deng & Li, CVPR 2022), NHWC Flax Linen.

    encoder taps f_1..f_N (frozen, shallow to deep; WRN50-2 layer1-3: 256@64^2, 512@32^2, 1024@16^2)
      OCBE: f_i --(N-1-i) x [conv3x3 stride 2 - BN - ReLU], widths c_{i+1}, ..., c_N--> c_N @ size of f_N
            concat [f_1', ..., f_{N-1}', f_N] (N c_N channels)
            -> one ResNet layer (stride 2 in its first block) -> 2 c_N @ half the size of f_N
      decoder: N reversed ResNet stages, deep to shallow, each upsampling x2 in its first block
            -> d_N, ..., d_1 with exactly the encoder taps' channels and sizes

With N = 3 and WRN50-2 this is anomalib's OCBE + de_wide_resnet50_2 layer by layer
(benchmarks/peer/compare_rd_heads.py compares the outputs with the same weights):
[anomalib] components/bottleneck.py OCBE — conv1 (256->512) and conv2 (512->1024) on f1, conv3
(512->1024) on f2, each stride 2 + BN + ReLU; `bn_layer` = 3 torchvision Bottlenecks, planes 512,
stride 2 on the first block's 3x3, a conv1x1(3072 -> 2048, stride 2) + BN projection shortcut;
ResNet-18 (BasicBlock): 2 blocks. anomalib's and the original code's conv4/bn4 (1x1
3072 -> 2048) are created but never called; they are not built here (8,392,704 parameters for
WRN50-2, see tests/test_reverse_distillation.py).
[anomalib] components/backbone/resnet_decoder.py: stages of [3, 4, 6] DecoderBottlenecks
(planes 256, 128, 64; width_per_group 128 for Wide-ResNets) or [2, 2, 2] DecoderBasicBlocks;
the first block of every stage upsamples with a 2x2 stride-2 transposed conv in place of its
3x3, and its shortcut is a 2x2 stride-2 transposed conv + BN.
[ours] the generalisation to any backbone and any N: every width is derived from the tap
channels (anomalib's constants are c_1 = 64e, c_2 = 128e, c_3 = 256e with e the block expansion),
so e.g. EfficientNet-Lite0 stage2/3/4 (24, 40, 80 channels) works unchanged.

Initialisation as the PyTorch code: convolutions kaiming_normal(fan_out, relu); the transposed
convolutions keep torch's default (its init loops test isinstance(nn.Conv2d), which a
ConvTranspose2d is not): kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan)) with torch's fan_in of a
transposed weight = out_channels * 4; BN scale 1, bias 0. BatchNorm as torch's (momentum 0.1 ->
Flax 0.9, eps 1e-5; Flax's running variance uses the biased batch variance, torch the unbiased
one — a factor n/(n-1) on the running statistics only).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax import errors

BLOCKS = ("bottleneck", "basic")
EXPANSION = {"bottleneck": 4, "basic": 1}

_BN_MOMENTUM = 0.9  # torch momentum 0.1
_BN_EPS = 1e-5

# torch kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / (out * k * k)), untruncated.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default ConvTranspose2d init, U(-b, b), b = 1 / sqrt(out * k * k); for the (2, 2, in, out)
# kernels below jax's fan_out is out * 4, the same number.
_up_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    # torch padding = kernel // 2 on both sides, not 'SAME' (which pads a stride-2 conv (0, 1)).
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_conv_init,
        name=name,
    )


def _bn(train: bool, name: str) -> nn.BatchNorm:
    # Two-pass batch variance as torch (Flax's fast E[x^2] - E[x]^2 loses digits on the 2x2
    # embedding maps, where a channel's batch statistics come from a handful of values).
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPS,
        use_fast_variance=False,
        name=name,
    )


class UpConv2x2(nn.Module):
    """torch ConvTranspose2d(kernel 2, stride 2, no bias): out[2i+a, 2j+b] = x[i, j] @ K[a, b].

    With kernel = stride the output pixels do not overlap, so this is one matmul and a
    depth-to-space; the kernel is torch's weight (in, out, a, b) transposed to (a, b, in, out),
    with no spatial flip (lax.conv_transpose would need one)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _up_init, (2, 2, x.shape[-1], self.features), jnp.float32)
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel.astype(x.dtype))
        return y.reshape(b, 2 * h, 2 * w, self.features)


class Bottleneck(nn.Module):
    """torchvision Bottleneck (V1.5, stride on the 3x3) with a free output width:
    1x1 - BN - ReLU - 3x3(stride) - BN - ReLU - 1x1 - BN, + shortcut (1x1(stride) + BN when the
    shape changes), ReLU."""

    width: int
    out: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(_bn(train, "bn1")(_conv(self.width, 1, 1, "conv1")(x)))
        y = nn.relu(_bn(train, "bn2")(_conv(self.width, 3, self.stride, "conv2")(y)))
        y = _bn(train, "bn3")(_conv(self.out, 1, 1, "conv3")(y))
        identity = x
        if self.stride != 1 or x.shape[-1] != self.out:
            identity = _bn(train, "downsample_bn")(_conv(self.out, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + identity)


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3(stride) - BN - ReLU - 3x3 - BN, + shortcut, ReLU."""

    out: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(_bn(train, "bn1")(_conv(self.out, 3, self.stride, "conv1")(x)))
        y = _bn(train, "bn2")(_conv(self.out, 3, 1, "conv2")(y))
        identity = x
        if self.stride != 1 or x.shape[-1] != self.out:
            identity = _bn(train, "downsample_bn")(_conv(self.out, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + identity)


class DecoderBottleneck(nn.Module):
    """anomalib's DecoderBottleneck: 1x1 - BN - ReLU - (2x2 stride-2 transposed conv when
    upsampling, else 3x3) - BN - ReLU - 1x1 - BN, + shortcut (transposed 2x2 + BN when
    upsampling), ReLU."""

    width: int
    out: int
    upsample: bool = False
    out_relu: bool = True  # False: signed output (see Decoder)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(_bn(train, "bn1")(_conv(self.width, 1, 1, "conv1")(x)))
        mid = UpConv2x2(self.width, name="conv2") if self.upsample else _conv(self.width, 3, 1, "conv2")
        y = nn.relu(_bn(train, "bn2")(mid(y)))
        y = _bn(train, "bn3")(_conv(self.out, 1, 1, "conv3")(y))
        identity = x
        if self.upsample:
            identity = _bn(train, "upsample_bn")(UpConv2x2(self.out, name="upsample_conv")(x))
        elif x.shape[-1] != self.out:
            raise ValueError(f"decoder block without upsampling maps {x.shape[-1]} to {self.out} channels")
        return nn.relu(y + identity) if self.out_relu else y + identity


class DecoderBasicBlock(nn.Module):
    """anomalib's DecoderBasicBlock: (2x2 stride-2 transposed conv when upsampling, else 3x3) -
    BN - ReLU - 3x3 - BN, + shortcut (transposed 2x2 + BN when upsampling), ReLU."""

    out: int
    upsample: bool = False
    out_relu: bool = True  # False: signed output (see Decoder)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        first = UpConv2x2(self.out, name="conv1") if self.upsample else _conv(self.out, 3, 1, "conv1")
        y = nn.relu(_bn(train, "bn1")(first(x)))
        y = _bn(train, "bn2")(_conv(self.out, 3, 1, "conv2")(y))
        identity = x
        if self.upsample:
            identity = _bn(train, "upsample_bn")(UpConv2x2(self.out, name="upsample_conv")(x))
        elif x.shape[-1] != self.out:
            raise ValueError(f"decoder block without upsampling maps {x.shape[-1]} to {self.out} channels")
        return nn.relu(y + identity) if self.out_relu else y + identity


def block_width(block: str, out: int, width_per_group: int, what: str) -> int:
    """The inner width of a block with `out` output channels: torchvision's
    int(planes * width_per_group / 64) with planes = out / expansion (Bottleneck); a BasicBlock
    has no inner width (its convs are `out` wide)."""
    if block == "basic":
        return out
    expansion = EXPANSION[block]
    if out % expansion:
        raise ValueError(f"{what}: {out} channels is not a multiple of the Bottleneck expansion {expansion}")
    return max(1, int(out // expansion * (width_per_group / 64.0)))


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """Every width of the OCBE and the decoder, derived from the encoder taps (see `head_spec`)."""

    tap_channels: tuple[int, ...]  # c_1..c_N, shallow to deep
    block: str  # "bottleneck" | "basic", for the OCBE layer and the decoder stages
    ocbe_blocks: int
    ocbe_out: int  # channels of the embedding (2 c_N in anomalib)
    ocbe_width: int  # inner width of the OCBE blocks
    decoder_blocks: tuple[int, ...]  # per stage, deep to shallow
    decoder_widths: tuple[int, ...]  # inner widths per stage, deep to shallow
    # The ReLU that ends every decoder stage (anomalib's); False for encoders whose taps are
    # signed (see Decoder).
    tap_relu: bool = True


def head_spec(
    tap_channels: tuple[int, ...],
    *,
    block: str,
    ocbe_blocks: int,
    ocbe_width_per_group: int,
    ocbe_channels: int,
    decoder_blocks: tuple[int, ...],
    decoder_width_per_group: int,
    tap_relu: bool = True,
) -> HeadSpec:
    """The widths of the head for encoder taps with `tap_channels` (shallow to deep).

    ocbe_channels 0 = 2 c_N, anomalib's 512 e (2048 for WRN50-2, 512 for ResNet-18)."""
    if block not in BLOCKS:
        raise errors.ConfigError(f"config.model.block={block!r}; expected one of {BLOCKS} or 'auto'")
    n = len(tap_channels)
    if n < 1:
        raise errors.ConfigError("Reverse Distillation needs at least one encoder tap (config.backbone.taps)")
    if len(decoder_blocks) != n:
        raise errors.ConfigError(
            f"config.model.decoder_blocks {tuple(decoder_blocks)} needs one entry per encoder tap ({n} taps)"
        )
    if ocbe_blocks < 1 or min(decoder_blocks) < 1:
        raise errors.ConfigError("config.model.ocbe_blocks and every config.model.decoder_blocks entry must be >= 1")
    out = int(ocbe_channels) or 2 * tap_channels[-1]
    deep_to_shallow = tap_channels[::-1]
    return HeadSpec(
        tap_channels=tuple(tap_channels),
        block=block,
        ocbe_blocks=int(ocbe_blocks),
        ocbe_out=out,
        ocbe_width=block_width(block, out, ocbe_width_per_group, "config.model.ocbe_channels"),
        decoder_blocks=tuple(int(b) for b in decoder_blocks),
        decoder_widths=tuple(
            block_width(block, c, decoder_width_per_group, f"encoder tap of {c} channels") for c in deep_to_shallow
        ),
        tap_relu=bool(tap_relu),
    )


class OCBE(nn.Module):
    """One-class bottleneck embedding: multi-scale fusion, then one ResNet layer at stride 2."""

    spec: HeadSpec

    @nn.compact
    def __call__(self, features: list[jax.Array], train: bool) -> jax.Array:
        channels = self.spec.tap_channels
        n = len(channels)
        fused = []
        for i, f in enumerate(features):
            if f.shape[-1] != channels[i]:
                raise ValueError(f"OCBE: tap {i} has {f.shape[-1]} channels, the head was built for {channels[i]}")
            # Tap i reaches the deepest tap's size by (n-1-i) stride-2 convs through the
            # deeper taps' widths (anomalib: f1 256->512->1024, f2 512->1024).
            for j in range(i + 1, n):
                f = _conv(channels[j], 3, 2, f"tap{i}_conv{j - i}")(f)
                f = nn.relu(_bn(train, f"tap{i}_bn{j - i}")(f))
            if f.shape[1:3] != features[-1].shape[1:3]:
                raise ValueError(
                    f"OCBE: tap {i} reaches {f.shape[1:3]} after its stride-2 convs, the deepest tap is "
                    f"{features[-1].shape[1:3]}: taps must halve in size one after the other"
                )
            fused.append(f)
        x = jnp.concatenate(fused, axis=-1)
        for k in range(self.spec.ocbe_blocks):
            stride = 2 if k == 0 else 1
            name = f"layer_{k}"
            if self.spec.block == "bottleneck":
                x = Bottleneck(self.spec.ocbe_width, self.spec.ocbe_out, stride, name=name)(x, train)
            else:
                x = BasicBlock(self.spec.ocbe_out, stride, name=name)(x, train)
        return x


class Decoder(nn.Module):
    """Reversed ResNet: one stage per encoder tap, deep to shallow, each doubling the size in
    its first block. Returns the decoded features shallow to deep (the taps' order).

    Every block ends in a ReLU in anomalib, which suits ResNet taps (post-ReLU, >= 0). An
    EfficientNet's stage ends are linear-bottleneck outputs, about half negative: a ReLU'd
    decoder cannot reproduce those, and its cosine to Lite0's stage2/3/4 taps is capped near
    0.7. With `tap_relu` False the last block of each stage returns its residual sum without
    the ReLU, so the decoded taps are signed like the encoder's. [ours]"""

    spec: HeadSpec

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
        outs = []
        deep_to_shallow = self.spec.tap_channels[::-1]
        for s, (out, blocks, width) in enumerate(
            zip(deep_to_shallow, self.spec.decoder_blocks, self.spec.decoder_widths)
        ):
            for k in range(blocks):
                name = f"stage{s}_{k}"
                relu = self.spec.tap_relu or k < blocks - 1
                if self.spec.block == "bottleneck":
                    x = DecoderBottleneck(width, out, upsample=k == 0, out_relu=relu, name=name)(x, train)
                else:
                    x = DecoderBasicBlock(out, upsample=k == 0, out_relu=relu, name=name)(x, train)
            outs.append(x)
        return outs[::-1]


class ReverseDistillationHead(nn.Module):
    """OCBE + decoder: encoder taps (shallow to deep) -> decoded features of the same shapes."""

    spec: HeadSpec

    @nn.compact
    def __call__(self, features: list[jax.Array], train: bool = False) -> list[jax.Array]:
        if len(features) != len(self.spec.tap_channels):
            raise ValueError(f"the head takes {len(self.spec.tap_channels)} taps, got {len(features)}")
        embedding = OCBE(self.spec, name="bottleneck")(features, train)
        return Decoder(self.spec, name="decoder")(embedding, train)
