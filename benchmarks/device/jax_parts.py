"""The JAX parts of run_gpu.py, each run in a process of its own by it (never imported by it).

    python benchmarks/device/jax_parts.py PART --plan PLAN_JSON --out PART_JSON

PART is one of env, kernels, paper, draem, baseline, patchcore. PLAN_JSON holds the shapes and
repeats run_gpu.py chose (tiny ones for --dry-run) and a `deadline` (Unix time): a part times
its rows in order, writes PART_JSON after each one (so a part killed at its budget keeps what it
finished) and skips the rows it has no time left for, saying so.

Rows are timed as the other benchmarks are (benchmarks/common.py: `warmup` untimed calls, median
of `repeats` timed calls, each blocking until its result is ready), without the CPU contention
guard (a GPU machine runs nothing else; a dry run is no record).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/: common, bench_model, bench_baselines
sys.path.insert(0, ROOT)

import bench_baselines  # noqa: E402
import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from bench_model import ModelBench, load_config, xla_flops  # noqa: E402

from xray_flax import config_files, detectors, parallel, steps  # noqa: E402
from xray_flax.nn import depthwise, layers  # noqa: E402

# Packages whose versions the environment record names (those not installed are listed as None).
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "scipy",
    "grain",
    "ml-collections",
    "tensorboard",
    "imagecodecs",
    "pydicom",
    "dm-pix",
    "jraph",
    "dm-tree",
    "torch",
    "timm",
    "anomalib",
    "pytest",
)


class Part:
    """One part's rows and notes, written to its JSON after every change."""

    def __init__(self, name: str, plan: dict, out: str):
        self.name, self.plan, self.out = name, plan, out
        self.report = {"part": name, "rows": [], "skipped_rows": [], "notes": []}

    def time_left(self) -> float:
        return self.plan["deadline"] - time.time()

    def write(self) -> None:
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.report, f, indent=1)
        os.replace(tmp, self.out)

    def skip(self, what: dict, reason: str) -> None:
        self.report["skipped_rows"].append({**what, "reason": reason})
        print(f"[{self.name}] skipped {what}: {reason}", flush=True)
        self.write()

    def timed_row(self, what: dict, make) -> dict | None:
        """make() -> (call, info); the row of its timed calls, or None when skipped for time."""
        if self.time_left() < self.plan.get("min_row_s", 5.0):
            self.skip(what, f"part budget spent ({self.time_left():.0f} s left)")
            return None
        t0 = time.perf_counter()
        fn, info = make()
        times, _ = common.time_calls(fn, self.plan["warmup"], self.plan["repeats"], wait_idle_s=0)
        stats = common.summarize(times, what["batch"])
        row = {
            **what,
            "device": device_name(),
            "median_ms": 1e3 * stats["median_s_per_call"],
            "ms_per_image": 1e3 * stats["median_s_per_image"],
            "images_per_s": stats["images_per_s"],
            "all_ms": [round(1e3 * t, 3) for t in times],
            "warmup": self.plan["warmup"],
            "repeats": self.plan["repeats"],
            "compile_s": round(info.get("compile_s", float("nan")), 2),
            "row_wall_s": round(time.perf_counter() - t0, 2),
        }
        if info.get("xla_flops_per_call"):
            row["tflop_per_s"] = info["xla_flops_per_call"] / stats["median_s_per_call"] / 1e12
        self.report["rows"].append(row)
        print(f"[{self.name}] {what}: {row['median_ms']:.2f} ms/call (compile {row['compile_s']} s)", flush=True)
        self.write()
        del fn
        return row


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --- env -----------------------------------------------------------------------------------------


def part_env(part: Part) -> None:
    devices = jax.devices()
    part.report["result"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "memory_stats": {k: v for k, v in (devices[0].memory_stats() or {}).items() if k.endswith("limit")},
        "jax_default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None)),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "versions": {name: _version(name) for name in PACKAGES},
        "nvidia_smi": _command(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"]
        ),
        "nvcc": _command(["nvcc", "--version"]),
        "cpu": common.cpu_name(),
        "os_cpu_count": os.cpu_count(),
    }
    part.write()


# --- kernels: which form of each per-platform kernel the default backend lowers -----------------

# The ops that tell the forms apart (tests/test_nn_platform.py).
_KERNEL_OPS = ("convolution", "dot_general", "gather", "scatter", "reduce_window", "select_and_scatter", "reduce")


def _kernel_ops(fn, *args) -> dict:
    """Kernel op counts of fn's lowering for the default backend (the machine's own platform)."""
    text = jax.jit(fn).lower(*args).as_text()
    counts = Counter(re.findall(r"stablehlo\.([a-z_]+)", text))
    return {k: counts[k] for k in _KERNEL_OPS}


def _grad(fn):
    return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=0)


def _kernel_cases():
    key = jax.random.key(0)
    x_conv, w_conv = jax.random.normal(key, (1, 128, 64, 4)), 0.1 * jax.random.normal(key, (3, 3, 4, 5))
    x_wide, w_wide = jax.random.normal(key, (2, 8, 6, 256)), 0.1 * jax.random.normal(key, (3, 3, 256, 256))
    x_small = jax.random.normal(key, (1, 8, 6, 3))
    x_dw, w_dw = jax.random.normal(key, (1, 8, 8, 4)), jax.random.normal(key, (3, 3, 1, 4))
    # CS-Flow's cross convolutions on a 2x2 map (nn/flows.py TorchConv): im2col on XLA:CPU only.
    x_tiny, w_tiny = jax.random.normal(key, (2, 2, 2, 16)), 0.1 * jax.random.normal(key, (3, 3, 16, 32))

    def dw(f):
        return lambda a, b: f(a, b, (2, 2), "SAME")

    def same(f):
        return lambda a, b: f(a, b, 1, 1)

    wgrad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=1)  # noqa: E731
    return [
        ("conv3x3_same (row-blocked weight gradient)", layers.conv3x3_same, layers.conv3x3_same_cpu,
         layers.conv3x3_same_native, wgrad, (x_conv, w_conv)),
        ("conv3x3_same (nine-matmul weight gradient)", layers.conv3x3_same, layers.conv3x3_same_cpu,
         layers.conv3x3_same_native, wgrad, (x_wide, w_wide)),
        ("upsample2x", layers.upsample2x, layers.upsample2x_cpu, layers.upsample2x_native, _grad, (x_small,)),
        ("max_pool2", layers.max_pool2, layers.max_pool2_cpu, layers.max_pool2_native, _grad, (x_small,)),
        ("depthwise_conv", dw(depthwise.depthwise_conv), dw(depthwise.depthwise_conv_cpu),
         dw(depthwise.depthwise_conv_native), _grad, (x_dw, w_dw)),
        ("conv2d on a 2x2 map (im2col)", same(layers.conv2d), same(layers.conv2d_im2col),
         same(layers.conv2d_native), _grad, (x_tiny, w_tiny)),
    ]  # fmt: skip


def part_kernels(part: Part) -> None:
    """On XLA:CPU the dispatchers must lower to the *_cpu forms, anywhere else to the native ones."""
    expected = "cpu" if jax.default_backend() == "cpu" else "native"
    checks = []
    for name, dispatch, cpu_form, native_form, transform, args in _kernel_cases():
        ops = {form: _kernel_ops(transform(f), *args) for form, f in
               (("dispatch", dispatch), ("cpu", cpu_form), ("native", native_form))}  # fmt: skip
        if ops["cpu"] == ops["native"]:
            chosen = "indistinguishable"
        else:
            chosen = "cpu" if ops["dispatch"] == ops["cpu"] else "native" if ops["dispatch"] == ops["native"] else "?"
        got = jax.jit(transform(dispatch))(*args)
        want = jax.jit(transform(native_form if expected == "native" else cpu_form))(*args)
        err = float(jnp.max(jnp.abs(got - want)) / (jnp.max(jnp.abs(want)) + 1e-12))
        checks.append({"kernel": name, "chosen": chosen, "expected": expected, "ops": ops, "rel_err_vs_expected": err})
        print(f"[kernels] {name}: lowered the {chosen} form (expected {expected}); rel err {err:.2e}", flush=True)
    part.report["result"] = {
        "backend": jax.default_backend(),
        "device": device_name(),
        "expected_form": expected,
        "cpu_only_kernels_off": expected == "native" and all(c["chosen"] == "native" for c in checks),
        "all_as_expected": all(c["chosen"] == expected for c in checks),
        "checks": checks,
    }
    part.write()


# --- models --------------------------------------------------------------------------------------


def _shrink(config, shrink: dict) -> None:
    for key, value in shrink.items():
        section, name = key.split(".")
        config[section][name] = tuple(value) if isinstance(value, list) else value


def _model_part(part: Part, config_name: str, spec: dict) -> None:
    """Train and infer rows of bench_model.ModelBench (the step train.py runs; the jitted anomaly map)."""
    part.report["result"] = {"config": f"configs/{config_name}.py", "channels": spec["channels"], "size": spec["size"]}
    benches, variables = {}, {}
    for mode, dtype, batch in spec["rows"]:
        what = {"model": spec["model"], "side": "ours", "mode": mode, "dtype": dtype, "size": spec["size"],
                "batch": batch}  # fmt: skip
        if dtype not in benches:
            config = load_config(config_name, dtype, spec["channels"])
            _shrink(config, spec.get("shrink", {}))
            benches[dtype] = ModelBench(config)
        bench = benches[dtype]
        if mode == "train":
            make = lambda bench=bench, batch=batch: bench.make_train(batch, spec["size"])  # noqa: E731
        else:
            make = lambda bench=bench, batch=batch: _make_infer(bench, batch, spec["size"], variables)  # noqa: E731
        part.timed_row(what, make)
    part.report["result"]["params"] = next(iter(benches.values())).num_params() if benches else None
    part.write()


def _make_infer(bench: ModelBench, batch: int, size: int, cache: dict):
    """ModelBench.make_infer with the variables initialised once per size for all rows (their
    parameters are float32 whatever the compute dtype): an init compiles the whole network."""
    detector = bench.detector(size)
    if size not in cache:
        cache[size] = steps.init_variables(detector, jax.random.key(0), size, bench.channels, bench.mesh)
    variables = cache[size]

    def infer(variables, images):
        out = detector.anomaly_map(variables, images)
        return out, jnp.max(out["map"], axis=(1, 2))

    images = bench.images(batch, size)
    t0 = time.perf_counter()
    compiled = jax.jit(infer).lower(variables, images).compile()
    info = {"compile_s": time.perf_counter() - t0, "xla_flops_per_call": xla_flops(compiled)}
    return (lambda: jax.block_until_ready(compiled(variables, images))), info


def part_paper(part: Part) -> None:
    _model_part(part, "paper", part.plan["paper"])


def part_draem(part: Part) -> None:
    _model_part(part, "draem", part.plan["draem"])


def part_baseline(part: Part) -> None:
    """A baseline (bench_baselines.py's STFPM on ResNet-18, random weights): train and infer rows."""
    spec = part.plan["baseline"]
    config, source = bench_baselines.load_config(spec["name"], spec["size"], spec["backbone"])
    detector = detectors.build(config)
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1}))
    part.report["result"] = {"config": source, "backbone": config.backbone.name, "size": spec["size"]}
    for mode, batch in spec["rows"]:
        what = {"model": spec["name"], "side": "ours", "mode": mode, "dtype": "float32", "size": spec["size"],
                "batch": batch}  # fmt: skip
        if mode == "train":
            make = lambda batch=batch: bench_baselines.make_train(detector, mesh, batch, spec["size"])  # noqa: E731
        else:
            make = lambda batch=batch: bench_baselines.make_infer(detector, mesh, batch, spec["size"])  # noqa: E731
        part.timed_row(what, make)


def part_patchcore(part: Part) -> None:
    """PatchCore's fit rate: tiles/s of fit_update over the batches after the first (compile)."""
    spec = part.plan["patchcore"]
    config = config_files.load(os.path.join(config_files.CONFIGS_DIR, f"{spec['config']}.py")).get_config()
    size, batch = spec["size"], spec["batch"]
    config.data.patch_size, config.data.stride, config.train.batch_size = size, size, batch
    _shrink(config, spec.get("shrink", {}))
    detector = detectors.build(config)
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1}))
    variables = steps.init_variables(detector, jax.random.key(0), size, 1, mesh, pretrained=False)
    plan = detector.fit_init.keywords["plan"]
    stride = plan.backbone.strides[plan.backbone.taps[0]]
    positions = (size // stride) ** 2
    result = {
        "config": f"configs/{spec['config']}.py",
        "backbone": config.backbone.name,
        "size": size,
        "batch": batch,
        "bank_size": int(config.model.bank_size),
        "chunk_size": int(config.model.chunk_size),
        "patches_per_tile": positions,
        "buffer_full_after_tiles": int(config.model.chunk_size) // positions,
        "device": device_name(),
        "batch_s": [],
    }
    part.report["result"] = result
    rng = np.random.default_rng(0)
    state = detector.fit_init(variables)
    for i in range(spec["batches"]):
        if i > 1 and part.time_left() < 2 * max(result["batch_s"][1:] or [0.0]) + 2:
            part.report["notes"].append(f"stopped after {i} batches: part budget")
            break
        images = rng.random((batch, size, size, 1), np.float32)
        t0 = time.perf_counter()
        host_batch = {"image": images, "valid": np.ones(batch, np.float32)}
        state = detector.fit_update(state, variables, parallel.global_batch(host_batch, mesh))
        jax.block_until_ready(state)
        result["batch_s"].append(round(time.perf_counter() - t0, 4))
        timed = result["batch_s"][1:]  # the first batch compiles
        if timed:
            result["tiles_per_s"] = batch * len(timed) / sum(timed)
            result["timed_tiles"] = batch * len(timed)
            # Tiles past chunk_size / patches_per_tile fill the buffer: from then on each batch merges
            # and reduces the coreset, which the rate then includes.
            result["coreset_reductions_included"] = len(result["batch_s"]) * batch > result["buffer_full_after_tiles"]
        part.write()
    print(f"[patchcore] {result.get('tiles_per_s', float('nan')):.1f} tiles/s; batches {result['batch_s']}", flush=True)


PARTS = {
    "env": part_env,
    "kernels": part_kernels,
    "paper": part_paper,
    "draem": part_draem,
    "baseline": part_baseline,
    "patchcore": part_patchcore,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=sorted(PARTS))
    p.add_argument("--plan", required=True, help="JSON of run_gpu.py's plan")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    part = Part(args.part, json.loads(args.plan), args.out)
    part.write()
    PARTS[args.part](part)
    part.report["done"] = True
    part.write()


if __name__ == "__main__":
    main()
