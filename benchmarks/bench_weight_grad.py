"""The weight gradient of one 3x3 conv, three ways, against the forward conv of the same shape.

    python benchmarks/bench_weight_grad.py [--shapes 256:128:128,64:512:256,...] [--out FILE]

  forward       the conv itself (same FLOPs: the reference rate)
  xla           jax.vjp of lax.conv_general_dilated w.r.t. the kernel (one conv over all pixels)
  row_blocks    the sum of row-block weight gradients (layers.py's path for narrow layers)
  nine_dots     nine [in, pixels] @ [pixels, out] matmuls (layers.py's path for wide layers)
  layers        what nn/layers.conv3x3_same picks for this shape

Shapes are SIZE:IN:OUT (batch 1, fp32). Prints ms and GFLOP/s per variant and the relative
difference of each gradient from XLA's; the choice between the two fast paths in layers.py
(_WGRAD_DOT_MIN_CHANNEL_PRODUCT) comes from this table (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from xray_flax.nn import layers  # noqa: E402

_NHWC = ("NHWC", "HWIO", "NHWC")


def _forward(x, g, w):
    del g
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _xla(x, g, w):
    return jax.vjp(lambda k: _forward(x, None, k), w)[1](g)[0]


def _row_blocks(x, g, w):
    return layers._weight_grad_row_blocks(x, g, w).astype(w.dtype)


def _nine_dots(x, g, w):
    return layers._weight_grad_dots(x, g).astype(w.dtype)


def _layers(x, g, w):
    return jax.vjp(lambda k: layers.conv3x3_same(x, k), w)[1](g)[0]


VARIANTS = {"forward": _forward, "xla": _xla, "row_blocks": _row_blocks, "nine_dots": _nine_dots, "layers": _layers}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="512:32:32,256:64:64,256:128:128,128:128:128,128:256:256,64:512:256,32:1024:512")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--wait-idle", type=float, default=60)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = []
    for spec in args.shapes.split(","):
        size, cin, cout = map(int, spec.split(":"))
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (1, size, size, cin))
        g = jax.random.normal(keys[1], (1, size, size, cout))
        w = jax.random.normal(keys[2], (3, 3, cin, cout))
        flops = 2.0 * size * size * 9 * cin * cout
        reference = None
        for name, fn in VARIANTS.items():
            f = jax.jit(fn)
            out = np.asarray(f(x, g, w))
            if name == "xla":
                reference = out
            error = (
                None
                if name == "forward" or reference is None
                else float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
            )
            times, load = common.time_calls(
                lambda f=f, x=x, g=g, w=w: jax.block_until_ready(f(x, g, w)),
                1,
                args.repeats,
                wait_idle_s=args.wait_idle,
            )
            median = float(np.median(times))
            rows.append(
                {
                    "size": size,
                    "in": cin,
                    "out": cout,
                    "variant": name,
                    "ms": median * 1e3,
                    "gflop_per_s": flops / median / 1e9,
                    "rel_diff_from_xla": error,
                    "max_foreign_cpu_frac": load["max_foreign_cpu_frac"],
                }
            )
            print(
                f"{size:4d} px {cin:5d}->{cout:<5d} {name:11s} {median * 1e3:8.1f} ms "
                f"{flops / median / 1e9:6.1f} GFLOP/s" + (f"  rel diff {error:.1e}" if error is not None else ""),
                flush=True,
            )
    result = {"env": common.env_info({"bench": "weight_grad"}), "rows": rows}
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
