"""Normalising-flow coupling blocks on NHWC feature maps: FastFlow's and CS-Flow's.

No maintained JAX/Flax library has these (docs/papers.md, "The JAX libraries"), so they are
written here after the PyTorch code the two detectors are known by:

* `AllInOneBlock`: FrEIA's AllInOneBlock as FastFlow uses it (vendored in anomalib 2.7 as
  anomalib/models/components/flow/all_in_one_block.py, built by
  anomalib/models/image/fastflow/torch_model.py with ``permute_soft=False``, no householder
  reflections, no reverse pre-permutation, no GIN), and `AllInOneFlow`, a stack of them
  (FrEIA's SequenceINN). One block maps x -> y:

      x1, x2 = x[..., :c1], x[..., c1:]             c1 = C - C // 2, c2 = C // 2   [FrEIA]
      a      = 0.1 * subnet(x1)                     2 * c2 channels                [FrEIA]
      s      = clamp * tanh(a[..., :c2])            |s| < clamp                    [FrEIA]
      x2'    = x2 * exp(s) + a[..., c2:]
      u      = concat(x1, x2') * g + b              g = 0.1 * softplus_{beta=0.5}(gamma)   [FrEIA 'SOFTPLUS']
      y      = u[..., perm]                         a hard random permutation, fixed at init
      log|det dy/dx| = sum_{h,w,c} s + H * W * sum_c log g

  gamma starts at 2 log(exp(5 * init) - 1), so g = init (1.0) everywhere at the start; b at 0.
  FastFlow's subnet is conv(k) -> ReLU -> conv(k), 'same' padding, hidden = int(c1 * ratio)
  channels (anomalib's ``subnet_conv_func``: the ratio applies to the subnet's input width,
  i.e. half the features).
* `CrossScaleFlow`: CS-Flow's parallel cross-scale Glow couplings (marco-rudolph/cs-flow
  freia_funcs.py and model.py; anomalib/models/image/csflow/torch_model.py). Each block is a
  fixed channel permutation of every scale followed by `ParallelGlowCoupling`:

      x_k = (x_k1, x_k2)  for every scale k          c1 = C // 2, c2 = C - C // 2  [original]
      (s, t)_k = r2(x_12, x_22, ...)_k                r2: CrossConvolutions, 2 * c1 channels
      y_k1 = e(s_k) * x_k1 + t_k
      (s', t')_k = r1(y_11, y_21, ...)_k              r1: CrossConvolutions, 2 * c2 channels
      y_k2 = e(s'_k) * x_k2 + t'_k
      e(s) = exp(log_e(s)),  log_e(s) = clamp * 0.636 * atan(s / clamp)   (|log_e| < 0.999 clamp)
      log|det| = sum over scales and elements of log_e(s) + log_e(s')

  CrossConvolutions (the paper's Fig. 3): per scale conv(k) -> LeakyReLU(0.1) -> conv(k); the
  hidden map of scale k+1 is bilinearly upsampled x2 (half-pixel centres) and convolved into
  scale k, the hidden map of scale k-1 goes through a stride-2 conv into scale k; each scale's
  sum is multiplied by a learnable scalar gamma_k initialised 0, so every block starts as the
  identity. Outputs are clipped to +-1e6 as in both PyTorch versions.

Every block and stack gives ``__call__(x) -> (y, logdet)`` with logdet per sample [B]
(float32) and ``inverse(y) -> x``. The permutations are drawn from the 'params' init key and
kept in the ``'constants'`` collection, so checkpoints hold them and ``apply`` needs that
collection; they get no gradients and no optimiser slots.

Convolutions are initialised as torch.nn.Conv2d's defaults (kernel and bias uniform in
+-1/sqrt(fan_in)), which both PyTorch versions use.

Differences from the PyTorch code, on purpose:
* the permutations come from the init key (anomalib's FastFlow: torch.randperm under the global
  seed; CS-Flow: numpy seeded with the block index) -- any fixed permutation is equally valid;
* CS-Flow's permutation is one per block shared by all scales as anomalib's
  (``default_rng(seed)`` restarted per scale); ``independent_scale_permutations=True`` draws
  one per scale as the original (``np.random.seed(k)`` then one draw per scale);
* CS-Flow's inverse is the exact inverse. Both PyTorch versions' reverse pass takes the
  shifts of the second half-step from r1's output instead of r2's (``t02 = r01[...]``), which
  is not the inverse of their forward pass; training and scoring use the forward pass only.
* CS-Flow's log-determinant is per sample [original: per sample]; anomalib 2.7 sums it over
  the batch too (``torch.stack(...).sum()``). The CS-Flow detector's loss offers both
  (xray_flax/detectors/csflow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_flax.nn.layers import conv2d, upsample2x

CONSTANTS = "constants"  # the collection holding the fixed permutations
GLOBAL_AFFINE_TYPES = ("SOFTPLUS", "SIGMOID", "EXP")
Z_LIMIT = 1e6  # CS-Flow clips its outputs to +-1e6 [original, anomalib]


def soft_clamp_tanh(a: jax.Array, clamp: float) -> jax.Array:
    """FrEIA AllInOneBlock's log-scale: clamp * tanh(a), in (-clamp, clamp)."""
    return clamp * jnp.tanh(a)


def soft_clamp_atan(s: jax.Array, clamp: float) -> jax.Array:
    """CS-Flow's log-scale: clamp * 0.636 * atan(s / clamp), in (-0.999 clamp, 0.999 clamp); 0.636 ~ 2/pi."""
    return clamp * 0.636 * jnp.arctan(s / clamp)


def torch_uniform_init(fan_in: int):
    """torch.nn.Conv2d's default initialisation of kernel and bias: uniform(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(1, fan_in))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchConv(nn.Module):
    """A 2-D convolution with torch.nn.Conv2d's default initialisation and symmetric padding."""

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = int(self.kernel_size)
        init = torch_uniform_init(k * k * x.shape[-1])
        kernel = self.param("kernel", init, (k, k, x.shape[-1], self.features))
        pad = k // 2  # torch padding=k//2 ('same' for odd k at stride 1)
        # XLA's conv, or on XLA:CPU for tiny maps (CS-Flow's) an im2col matmul (nn/layers.conv2d)
        y = conv2d(x, kernel.astype(x.dtype), self.stride, pad)
        if self.use_bias:
            y = y + self.param("bias", init, (self.features,)).astype(x.dtype)
        return y


def permutation_init(module: nn.Module, channels: int):
    """A random permutation of `channels`, drawn once from the module's 'params' init key."""
    return jax.random.permutation(module.make_rng("params"), channels).astype(jnp.int32)


def inverse_permutation(perm: jax.Array) -> jax.Array:
    return jnp.argsort(perm).astype(jnp.int32)


# --------------------------------------------------------------------------- FastFlow / FrEIA


class FastFlowSubnet(nn.Module):
    """conv(k) -> ReLU -> conv(k), 'same' padding [anomalib subnet_conv_func]."""

    out_channels: int
    hidden_channels: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(TorchConv(self.hidden_channels, self.kernel_size, name="conv0")(x))
        return TorchConv(self.out_channels, self.kernel_size, name="conv1")(h)


def _global_scale(gamma: jax.Array, kind: str) -> jax.Array:
    """FrEIA's global affine activations."""
    if kind == "SOFTPLUS":
        return 0.1 * 2.0 * jax.nn.softplus(0.5 * gamma)  # 0.1 * torch Softplus(beta=0.5)
    if kind == "SIGMOID":
        return 10.0 * jax.nn.sigmoid(gamma - 2.0)
    if kind == "EXP":
        return jnp.exp(gamma)
    raise ValueError(f"global_affine_type={kind!r}; expected one of {GLOBAL_AFFINE_TYPES}")


def _global_scale_start(init: float, kind: str) -> float:
    """The pre-activation gamma whose activation is `init` [FrEIA]."""
    if kind == "SOFTPLUS":
        return 2.0 * math.log(math.expm1(0.5 * 10.0 * init))
    if kind == "SIGMOID":
        return 2.0 - math.log(10.0 / init - 1.0)
    if kind == "EXP":
        return math.log(init)
    raise ValueError(f"global_affine_type={kind!r}; expected one of {GLOBAL_AFFINE_TYPES}")


class AllInOneBlock(nn.Module):
    """FrEIA's AllInOneBlock (affine coupling + global affine + hard permutation) on [B, H, W, C].

    `channels` is C; the subnet sees the first c1 = C - C // 2 channels and has
    int(c1 * hidden_ratio) hidden channels.
    """

    channels: int
    kernel_size: int = 3
    hidden_ratio: float = 1.0
    clamp: float = 2.0  # [anomalib FastFlow: affine_clamping 2.0]
    global_affine_init: float = 1.0  # [FrEIA default]
    global_affine_type: str = "SOFTPLUS"  # [FrEIA default]

    def setup(self):
        if self.channels < 2:
            raise ValueError(f"AllInOneBlock needs at least 2 channels, got {self.channels}")
        if self.global_affine_type not in GLOBAL_AFFINE_TYPES:
            raise ValueError(f"global_affine_type={self.global_affine_type!r}; expected one of {GLOBAL_AFFINE_TYPES}")
        self.c1 = self.channels - self.channels // 2
        self.c2 = self.channels // 2
        hidden = int(self.c1 * self.hidden_ratio)
        if hidden < 1:
            raise ValueError(f"hidden_ratio={self.hidden_ratio} gives no hidden channels for {self.c1} input channels")
        self.subnet = FastFlowSubnet(2 * self.c2, hidden, self.kernel_size)
        start = _global_scale_start(self.global_affine_init, self.global_affine_type)
        self.global_scale = self.param("global_scale", nn.initializers.constant(start), (self.channels,))
        self.global_offset = self.param("global_offset", nn.initializers.zeros, (self.channels,))
        self.permutation = self.variable(CONSTANTS, "permutation", permutation_init, self, self.channels)

    def _check(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"AllInOneBlock({self.channels} channels) expects [B, H, W, {self.channels}], got {x.shape}"
            )

    def _coupling(self, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
        a = 0.1 * self.subnet(x1)  # FrEIA scales all coupling outputs by 0.1 for stability
        return soft_clamp_tanh(a[..., : self.c2], self.clamp), a[..., self.c2 :]

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, H, W, C] -> (y [B, H, W, C], log|det dy/dx| [B])."""
        self._check(x)
        x1, x2 = x[..., : self.c1], x[..., self.c1 :]
        s, t = self._coupling(x1)
        u = jnp.concatenate([x1, x2 * jnp.exp(s) + t], axis=-1)
        scale = _global_scale(self.global_scale, self.global_affine_type)
        y = (u * scale + self.global_offset)[..., self.permutation.value]
        pixels = x.shape[1] * x.shape[2]
        logdet = jnp.sum(s, axis=(1, 2, 3)) + pixels * jnp.sum(jnp.log(scale))
        return y, logdet

    def inverse(self, y: jax.Array) -> jax.Array:
        """The exact inverse of __call__: y [B, H, W, C] -> x."""
        self._check(y)
        scale = _global_scale(self.global_scale, self.global_affine_type)
        u = (y[..., inverse_permutation(self.permutation.value)] - self.global_offset) / scale
        x1, x2 = u[..., : self.c1], u[..., self.c1 :]
        s, t = self._coupling(x1)
        return jnp.concatenate([x1, (x2 - t) * jnp.exp(-s)], axis=-1)


def fastflow_kernel_size(step: int, conv3x3_only: bool = False) -> int:
    """3x3 subnets on even steps, 1x1 on odd ones unless conv3x3_only [anomalib create_fast_flow_block]."""
    return 1 if step % 2 == 1 and not conv3x3_only else 3


class AllInOneFlow(nn.Module):
    """FastFlow's flow on one feature map: `steps` AllInOneBlocks in sequence (FrEIA SequenceINN)."""

    channels: int
    steps: int = 8  # [anomalib FastFlow flow_steps 8]
    hidden_ratio: float = 1.0  # [anomalib]
    clamp: float = 2.0  # [anomalib]
    conv3x3_only: bool = False  # [anomalib]

    def setup(self):
        if self.steps < 1:
            raise ValueError(f"a flow needs at least one step, got steps={self.steps}")
        self.blocks = [
            AllInOneBlock(
                self.channels,
                kernel_size=fastflow_kernel_size(i, self.conv3x3_only),
                hidden_ratio=self.hidden_ratio,
                clamp=self.clamp,
                name=f"block_{i}",
            )
            for i in range(self.steps)
        ]

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        logdet = jnp.zeros((x.shape[0],), jnp.float32)
        for block in self.blocks:
            x, step_logdet = block(x)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, y: jax.Array) -> jax.Array:
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y


# --------------------------------------------------------------------------- CS-Flow


def _check_scales(xs: Sequence[jax.Array], channels: int) -> None:
    for k, x in enumerate(xs):
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(f"CS-Flow scale {k}: expected [B, H, W, {channels}], got {x.shape}")
    for k in range(1, len(xs)):
        big, small = xs[k - 1].shape[1:3], xs[k].shape[1:3]
        if big != (2 * small[0], 2 * small[1]):
            raise ValueError(
                f"CS-Flow scales must halve exactly: scale {k - 1} is {big[0]}x{big[1]}, scale {k} is "
                f"{small[0]}x{small[1]} (use input sides divisible by the backbone stride times 2^(scales-1))"
            )


class CrossConvolutions(nn.Module):
    """CS-Flow's subnet over all scales at once [original CrossConvolutions, paper Fig. 3].

    For 3 scales this is exactly the original's conv_scale{k}_0/1, up_conv10, up_conv21,
    down_conv01, down_conv12 and gamma0..2; other scale counts chain the same pattern.
    """

    out_channels: int
    hidden_channels: int = 1024  # [original fc_internal 1024]
    kernel_size: int = 3
    leaky_slope: float = 0.1  # [original]
    use_gamma: bool = True  # [original]

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array]) -> list[jax.Array]:
        n, k = len(xs), self.kernel_size
        hidden = [
            nn.leaky_relu(TorchConv(self.hidden_channels, k, name=f"conv_scale{i}_0")(x), self.leaky_slope)
            for i, x in enumerate(xs)
        ]
        outs = []
        for i in range(n):
            out = TorchConv(self.out_channels, k, name=f"conv_scale{i}_1")(hidden[i])
            if i + 1 < n:  # the coarser scale, upsampled (torch Upsample bilinear, align_corners=False)
                out = out + TorchConv(self.out_channels, k, name=f"up_conv{i + 1}{i}")(
                    upsample2x(hidden[i + 1], align_corners=False)
                )
            if i > 0:  # the finer scale, stride-2 conv
                out = out + TorchConv(self.out_channels, k, stride=2, name=f"down_conv{i - 1}{i}")(hidden[i - 1])
            if self.use_gamma:
                out = out * self.param(f"gamma{i}", nn.initializers.zeros, (1,))
            outs.append(out)
        return outs


class ParallelGlowCoupling(nn.Module):
    """CS-Flow's parallel Glow coupling of all scales [original parallel_glow_coupling_layer]."""

    channels: int
    hidden_channels: int = 1024
    kernel_size: int = 3
    clamp: float = 3.0  # [original, anomalib]

    def setup(self):
        if self.channels < 2:
            raise ValueError(f"ParallelGlowCoupling needs at least 2 channels, got {self.channels}")
        self.c1 = self.channels // 2
        self.c2 = self.channels - self.channels // 2
        # Names as the original: s1 acts on the first half's output, s2 on the second half.
        self.s1 = CrossConvolutions(2 * self.c2, self.hidden_channels, self.kernel_size)
        self.s2 = CrossConvolutions(2 * self.c1, self.hidden_channels, self.kernel_size)

    def __call__(self, xs: Sequence[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
        """[x_k [B, H_k, W_k, C]] -> ([y_k], log|det| [B] summed over scales)."""
        _check_scales(xs, self.channels)
        c1 = self.c1
        x1s, x2s = [x[..., :c1] for x in xs], [x[..., c1:] for x in xs]
        r2 = self.s2(x2s)
        log_s2 = [soft_clamp_atan(r[..., :c1], self.clamp) for r in r2]
        y1s = [jnp.exp(ls) * x1 + r[..., c1:] for ls, x1, r in zip(log_s2, x1s, r2)]
        r1 = self.s1(y1s)
        log_s1 = [soft_clamp_atan(r[..., : self.c2], self.clamp) for r in r1]
        y2s = [jnp.exp(ls) * x2 + r[..., self.c2 :] for ls, x2, r in zip(log_s1, x2s, r1)]
        ys = [jnp.clip(jnp.concatenate([y1, y2], axis=-1), -Z_LIMIT, Z_LIMIT) for y1, y2 in zip(y1s, y2s)]
        logdet = sum(jnp.sum(a, axis=(1, 2, 3)) + jnp.sum(b, axis=(1, 2, 3)) for a, b in zip(log_s1, log_s2))
        return ys, logdet

    def inverse(self, ys: Sequence[jax.Array]) -> list[jax.Array]:
        """The exact inverse of __call__ (inside the +-1e6 clip)."""
        _check_scales(ys, self.channels)
        c1 = self.c1
        y1s, y2s = [y[..., :c1] for y in ys], [y[..., c1:] for y in ys]
        r1 = self.s1(y1s)
        x2s = [
            (y2 - r[..., self.c2 :]) * jnp.exp(-soft_clamp_atan(r[..., : self.c2], self.clamp))
            for y2, r in zip(y2s, r1)
        ]
        r2 = self.s2(x2s)
        x1s = [(y1 - r[..., c1:]) * jnp.exp(-soft_clamp_atan(r[..., :c1], self.clamp)) for y1, r in zip(y1s, r2)]
        return [jnp.concatenate([x1, x2], axis=-1) for x1, x2 in zip(x1s, x2s)]


def csflow_kernel_sizes(blocks: int) -> tuple[int, ...]:
    """3x3 in every block but the last, 5x5 there [original config kernel_sizes]."""
    return (3,) * (blocks - 1) + (5,)


class CrossScaleFlow(nn.Module):
    """CS-Flow's flow: `blocks` x (fixed permutation of every scale -> ParallelGlowCoupling)."""

    channels: int
    scales: int = 3  # [original n_scales 3]
    blocks: int = 4  # [original n_coupling_blocks 4]
    hidden_channels: int = 1024  # [original fc_internal]
    kernel_sizes: Sequence[int] | None = None  # None = csflow_kernel_sizes(blocks)
    clamp: float = 3.0  # [original]
    independent_scale_permutations: bool = False  # False: anomalib's; True: the original's

    def setup(self):
        if self.blocks < 1 or self.scales < 1:
            raise ValueError(f"CrossScaleFlow needs blocks >= 1 and scales >= 1, got {self.blocks}, {self.scales}")
        kernels = tuple(self.kernel_sizes) if self.kernel_sizes is not None else csflow_kernel_sizes(self.blocks)
        if len(kernels) != self.blocks:
            raise ValueError(f"kernel_sizes {kernels} must have one entry per block ({self.blocks})")
        n_perms = self.scales if self.independent_scale_permutations else 1

        def draw(module):
            keys = jax.random.split(module.make_rng("params"), n_perms)
            return jnp.stack([jax.random.permutation(k, self.channels) for k in keys]).astype(jnp.int32)

        self.permutations = [self.variable(CONSTANTS, f"permutation_{b}", draw, self) for b in range(self.blocks)]
        self.couplings = [
            ParallelGlowCoupling(self.channels, self.hidden_channels, kernels[b], self.clamp, name=f"coupling_{b}")
            for b in range(self.blocks)
        ]

    def _perm(self, block: int, scale: int) -> jax.Array:
        perms = self.permutations[block].value
        return perms[scale if perms.shape[0] > 1 else 0]

    def __call__(self, xs: Sequence[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
        """[x_k [B, H / 2^k, W / 2^k, C]] -> ([z_k], log|det| [B])."""
        if len(xs) != self.scales:
            raise ValueError(f"CrossScaleFlow({self.scales} scales) got {len(xs)} feature maps")
        xs = list(xs)
        logdet = jnp.zeros((xs[0].shape[0],), jnp.float32)
        for b, coupling in enumerate(self.couplings):
            xs = [x[..., self._perm(b, k)] for k, x in enumerate(xs)]
            xs, block_logdet = coupling(xs)
            logdet = logdet + block_logdet
        return xs, logdet

    def inverse(self, zs: Sequence[jax.Array]) -> list[jax.Array]:
        if len(zs) != self.scales:
            raise ValueError(f"CrossScaleFlow({self.scales} scales) got {len(zs)} maps")
        zs = list(zs)
        for b in reversed(range(self.blocks)):
            zs = self.couplings[b].inverse(zs)
            zs = [z[..., inverse_permutation(self._perm(b, k))] for k, z in enumerate(zs)]
        return zs
