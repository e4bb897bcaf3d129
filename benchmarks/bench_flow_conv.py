"""CS-Flow's cross convolutions on XLA:CPU: XLA's conv against the im2col matmul (nn/layers.conv2d).

    .venv/bin/python benchmarks/bench_flow_conv.py [--sizes 2,4,6,8,16,32] [--batch 8] [--repeats 5]
        [--out benchmarks/results/flow_conv.json]
    .venv/bin/python benchmarks/bench_flow_conv.py --native-flows -- --models csflow --out FILE ...

The first form times the TorchConv shapes of CS-Flow's CrossConvolutions (152 -> 1024 and
1024 -> 304 channels, 3x3, padding 1; the down conv at stride 2) on square maps of each `--sizes`
side (the input map; the stride-2 conv's output is half of it), batch `--batch`, forward and
forward+backward (the gradient w.r.t. input and kernel of sum(y^2)), with `conv2d_native` and
`conv2d_im2col` in the same process (median of `--repeats` jitted calls after one warm-up call,
compile excluded, benchmarks/common.py's contention stats per row).

The second form runs benchmarks/bench_baselines.py with the arguments after `--`, with every
TorchConv forced onto `conv2d_native` (the form before nn/layers.conv2d): the "before" of a
before/after of the whole CS-Flow step in one sitting, without editing the library.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import bench_baselines  # noqa: E402
import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from xray_flax.nn import flows, layers  # noqa: E402

# (in channels, out channels, stride): conv_scale*_0; conv_scale*_1 and up_conv; down_conv.
SHAPES = [(152, 1024, 1), (1024, 304, 1), (1024, 304, 2)]
FORMS = {"native": layers.conv2d_native, "im2col": layers.conv2d_im2col}


def _time_ms(fn, x, w, repeats: int, wait_idle_s: float) -> tuple[float, dict]:
    times, info = common.time_calls(
        lambda: jax.block_until_ready(fn(x, w)), 1, repeats, wait_idle_s=wait_idle_s, max_redo=1
    )
    return 1e3 * sorted(times)[len(times) // 2], info


def bench_shape(batch, size, cin, cout, stride, repeats, wait_idle_s) -> dict:
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.02
    out = (size + 2 - 3) // stride + 1
    row = {"batch": batch, "size": size, "cin": cin, "cout": cout, "stride": stride, "out_pixels": out * out}
    row["cpu_form"] = "im2col" if out * out <= layers._IM2COL_MAX_PIXELS else "native"
    for name, form in FORMS.items():
        conv = lambda a, b, f=form: f(a, b, stride, 1)  # noqa: E731
        fwd = jax.jit(conv)
        grad = jax.jit(jax.grad(lambda a, b, c=conv: jnp.sum(c(a, b) ** 2), argnums=(0, 1)))
        for step, fn in (("fwd", fwd), ("fwd_bwd", grad)):
            ms, info = _time_ms(fn, x, w, repeats, wait_idle_s)
            row[f"{name}_{step}_ms"] = round(ms, 2)
            row[f"{name}_{step}_max_foreign"] = round(info["max_foreign_cpu_frac"], 3)
    row["load_average"] = list(os.getloadavg())
    for step in ("fwd", "fwd_bwd"):
        row[f"speedup_{step}"] = round(row[f"native_{step}_ms"] / row[f"im2col_{step}_ms"], 2)
    times = " | ".join(f"{n} {row[f'{n}_fwd_ms']:7.1f} / {row[f'{n}_fwd_bwd_ms']:7.1f} ms" for n in FORMS)
    load = row["load_average"][0]
    print(f"{size:>3}px {cin:>4}->{cout:<4} s{stride}: {times} (fwd / fwd+bwd), load {load:.1f}", flush=True)
    return row


def run_baselines_native(argv: list[str]) -> None:
    flows.conv2d = lambda x, w, stride, padding: layers.conv2d_native(x, w, stride, padding)
    bench_baselines.main(argv)


def main() -> None:
    if "--native-flows" in sys.argv:
        rest = sys.argv[sys.argv.index("--native-flows") + 1 :]
        run_baselines_native(rest[1:] if rest[:1] == ["--"] else rest)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2,4,6,8,16,32")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--wait-idle", type=float, default=30, help="seconds to wait for an idle machine per timing")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = [
        bench_shape(args.batch, size, cin, cout, stride, args.repeats, args.wait_idle)
        for size in common.parse_list(args.sizes)
        for cin, cout, stride in SHAPES
    ]
    env = common.env_info({"im2col_max_pixels": layers._IM2COL_MAX_PIXELS})
    common.write_json(args.out, {"benchmark": "CS-Flow TorchConv forms", "env": env, "results": rows})


if __name__ == "__main__":
    main()
