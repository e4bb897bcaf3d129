"""Depthwise convolutions on XLA:CPU: the shifted-slice form against XLA's grouped convolution.

    .venv/bin/python benchmarks/bench_depthwise.py [--sizes 256,512] [--batch 8] [--repeats 5]
        [--out benchmarks/results/depthwise.json]

Two levels, each timed with both forms in the same process (median of `--repeats` jitted calls
after one warm-up call, compile excluded):
  * single layers: the EfficientNet depthwise shapes of docs/performance.md (batch `--batch`);
  * the EfficientNet-Lite0 backbone (real weights from the installed package, taps
    stage2-stage4 as configs/padim_cpu.py) at each `--sizes` px, batch `--batch`, forward only
    (what PaDiM, PatchCore, FastFlow and CS-Flow run it for), with the tap outputs of the two
    forms compared.
The native form is forced by swapping `depthwise.depthwise_conv` for `depthwise_conv_native`
before tracing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.bench_memory_bank import _cpu_name, _memory_gb  # noqa: E402
from xray_flax import backbones  # noqa: E402
from xray_flax.nn import depthwise  # noqa: E402

LAYERS = [
    ((128, 128, 48), 3, 1),
    ((64, 64, 144), 3, 1),
    ((32, 32, 240), 5, 1),
    ((16, 16, 768), 5, 1),
    ((64, 64, 96), 3, 2),
]


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_layers(batch: int, repeats: int) -> list[dict]:
    rows = []
    for (h, w, c), k, stride in LAYERS:
        x = jax.random.normal(jax.random.key(0), (batch, h, w, c))
        kernel = jax.random.normal(jax.random.key(1), (k, k, 1, c)) * 0.1
        strides = (stride, stride)
        cpu = jax.jit(lambda a, b, s=strides: depthwise.depthwise_conv_cpu(a, b, s, "SAME"))
        native = jax.jit(lambda a, b, s=strides: depthwise.depthwise_conv_native(a, b, s, "SAME"))
        t_cpu = _median_seconds(cpu, x, kernel, repeats=repeats)
        t_native = _median_seconds(native, x, kernel, repeats=repeats)
        rows.append(
            {
                "shape": [batch, h, w, c],
                "kernel": k,
                "stride": stride,
                "native_ms": round(t_native * 1e3, 2),
                "shifted_ms": round(t_cpu * 1e3, 2),
                "speedup": round(t_native / t_cpu, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_backbone(size: int, batch: int, repeats: int) -> dict:
    section = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    backbone = backbones.build(section, 1)
    variables = jax.tree.map(jax.numpy.asarray, backbone.load())
    images = jax.random.uniform(jax.random.key(0), (batch, size, size, 1))
    shifted = jax.jit(backbone.features)
    t_shifted = _median_seconds(shifted, variables, images, repeats=repeats)
    out_shifted = jax.device_get(shifted(variables, images))
    original = depthwise.depthwise_conv
    depthwise.depthwise_conv = lambda x, w, strides=(1, 1), padding="SAME": depthwise.depthwise_conv_native(
        x, w, strides, padding
    )
    try:
        native = jax.jit(lambda v, x: backbone.features(v, x))
        t_native = _median_seconds(native, variables, images, repeats=repeats)
        out_native = jax.device_get(native(variables, images))
    finally:
        depthwise.depthwise_conv = original
    worst = max(
        float(np.max(np.abs(out_shifted[t] - out_native[t])) / (np.max(np.abs(out_native[t])) + 1e-12))
        for t in out_native
    )
    row = {
        "size": size,
        "batch": batch,
        "native_s": round(t_native, 3),
        "shifted_s": round(t_shifted, 3),
        "speedup": round(t_native / t_shifted, 2),
        "images_per_s_shifted": round(batch / t_shifted, 2),
        "worst_relative_difference": float(f"{worst:.2e}"),
    }
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    result = {
        "what": "XLA:CPU depthwise conv: shifted-slice form (ours on CPU) vs lax grouped convolution",
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "memory_gb": _memory_gb()},
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["benchmarks/bench_depthwise.py", *sys.argv[1:]]),
        "layers": bench_layers(args.batch, args.repeats),
        "backbone_lite0": [bench_backbone(int(s), args.batch, args.repeats) for s in args.sizes.split(",")],
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
