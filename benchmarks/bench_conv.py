"""Where the model's time goes: one 3x3 conv (fwd, and fwd+bwd) at the shapes that dominate it.

    python benchmarks/bench_conv.py [--dtype float32|bfloat16] [--out FILE]

The first four shapes are those benchmarks/peer/cpu_peak.py times for torch's oneDNN conv,
so XLA's conv GFLOP/s lines up against oneDNN's on the same machine. The others are the
paper model's own large layers. FLOPs = 2 * MACs of the conv (fwd); fwd+bwd counts 3x.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# (batch, cin, cout, size): torch reference shapes first, then the paper model's.
SHAPES = [
    (1, 512, 512, 32),
    (1, 256, 256, 128),
    (1, 128, 128, 256),
    (4, 64, 64, 256),
    (1, 1, 32, 512),
    (1, 32, 32, 512),
    (1, 160, 32, 512),
    (1, 64, 64, 512),
    (1, 128, 64, 512),
]


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--wait-idle", type=float, default=60)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dtype = jnp.dtype(args.dtype)
    rows = []
    for b, cin, cout, s in SHAPES:
        x = jax.random.normal(jax.random.key(0), (b, s, s, cin), dtype)
        w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout), dtype) * 0.05
        flops = 2 * b * s * s * 9 * cin * cout
        fwd = jax.jit(conv)
        grad = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2), argnums=(0, 1)))
        row = {"batch": b, "cin": cin, "cout": cout, "size": s, "dtype": args.dtype, "gflop_fwd": flops / 1e9}
        for name, fn, f in (("fwd", fwd, flops), ("fwd_bwd", grad, 3 * flops)):
            times, info = common.time_calls(
                lambda fn=fn, x=x, w=w: jax.block_until_ready(fn(x, w)), 1, args.repeats, wait_idle_s=args.wait_idle
            )
            med = sorted(times)[len(times) // 2]
            row[f"{name}_ms"] = 1e3 * med
            row[f"{name}_gflop_per_s"] = f / med / 1e9
            row[f"{name}_max_foreign"] = info["max_foreign_cpu_frac"]
        rows.append(row)
        print(
            f"b{b} {cin:>4}->{cout:<4} @{s:<4} fwd {row['fwd_ms']:8.1f} ms {row['fwd_gflop_per_s']:6.1f} GFLOP/s"
            f" | fwd+bwd {row['fwd_bwd_ms']:8.1f} ms {row['fwd_bwd_gflop_per_s']:6.1f} GFLOP/s"
            f" (foreign {row['fwd_max_foreign']:.2f}/{row['fwd_bwd_max_foreign']:.2f})",
            flush=True,
        )
    common.write_json(args.out, {"benchmark": "3x3 conv", "env": common.env_info(), "results": rows})


if __name__ == "__main__":
    main()
