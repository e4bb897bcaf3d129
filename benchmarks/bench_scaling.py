"""Data-parallel scaling: step time and throughput against the number of devices and the
global batch, with the jitted train step train.py runs (steps.compile_train_step of the
config's detector; DRAEM: synthesis, both networks, losses, Adam, the non-finite guard).

    # GPUs/TPUs of this host: measure (weak scaling: 8 images per device)
    python benchmarks/bench_scaling.py --config paper --per_device_batch 8 --json scaling.json
    # strong scaling: a fixed global batch of 64 split over 1, 2, 4, 8 devices
    python benchmarks/bench_scaling.py --config paper --global_batch 64 --devices 1,2,4,8
    # CPU, 8 simulated devices: check that 1, 2 and 8 devices give the same loss curve
    python benchmarks/bench_scaling.py --simulate 8 --devices 1,2,8 --check

For every device count n the script builds parallel.make_mesh with n devices (the first n
of this process), compiles the step once and times --steps steps after --warmup steps on
fixed random images already on the devices, so the numbers are compute + gradient all-reduce,
without data loading (docs/data.md measures the pipeline). On simulated CPU devices all
"devices" share the same cores, so the timings say nothing about scaling; use --check there:
the same global batches and keys must give the same losses on every device count, which
fails if BatchNorm statistics or gradients were reduced per device instead of globally.

Reading the table (docs/scaling.md): `step ms` is the median step time; `img/s` the global
batch over it; `efficiency` the img/s per device relative to the smallest device count (1.0
is perfect scaling; with a fixed global batch, shrinking per-device batches lower it).
Single process only: on several hosts read the steps/s of the training log instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", help="a module of configs/ (tiny, default, paper, draem)")
    parser.add_argument(
        "--devices", default=None, help="comma-separated device counts (default: 1, 2, 4, .. up to all devices)"
    )
    parser.add_argument("--global_batch", type=int, default=None, help="fixed global batch (strong scaling)")
    parser.add_argument(
        "--per_device_batch",
        type=int,
        default=None,
        help="images per device (weak scaling); default: the config's global batch, fixed",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per device count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--simulate", type=int, default=0, help="CPU only: simulate this many devices")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare the loss curves of all device counts (same global batches and keys); exit 1 if they differ",
    )
    parser.add_argument("--rtol", type=float, default=1e-3, help="--check: relative tolerance of later losses")
    parser.add_argument(
        "--first_rtol",
        type=float,
        default=1e-5,
        help="--check: relative tolerance of the "
        "first loss (before any update; unsynchronised BatchNorm moves it by ~1e-2)",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.global_batch and args.per_device_batch:
        parser.error("give --global_batch (strong scaling) or --per_device_batch (weak scaling), not both")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.simulate:
        # Must happen before JAX initialises its backends.
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.simulate}"
        ).strip()
    sys.path.insert(0, REPO)
    # Imported late: JAX (which xray_flax imports) reads JAX_PLATFORMS and XLA_FLAGS, set above.
    import jax  # noqa: PLC0415

    from xray_flax import detectors, parallel, steps  # noqa: PLC0415

    parallel.enable_compilation_cache()
    config = importlib.import_module(f"configs.{args.config}").get_config()
    available = jax.device_count()
    if args.devices:
        counts = [int(n) for n in args.devices.split(",")]
    else:
        counts = [1 << k for k in range(available.bit_length()) if 1 << k <= available]
    if max(counts) > available:
        print(
            f"asked for {max(counts)} devices but {available} are visible"
            f"{' (use --simulate N on CPU)' if jax.default_backend() == 'cpu' else ''}",
            file=sys.stderr,
        )
        return 2

    channels, patch = config.data.channels, config.data.patch_size
    detector = detectors.build(config)
    if detector.train_step is None:
        print(f"detector {detector.name!r} has no train step to time", file=sys.stderr)
        return 2
    aux = detector.make_aux() if detector.make_aux is not None else None
    key = jax.random.key(config.seed)

    def run(n: int) -> dict:
        batch_size = (
            args.per_device_batch * n if args.per_device_batch else (args.global_batch or config.train.batch_size)
        )
        config.mesh.data = n
        mesh = parallel.make_mesh(config.mesh)
        parallel.check_batch_size(batch_size, mesh)
        device_aux = parallel.replicate(aux, mesh)
        state = steps.init_train_state(detector, key, patch, channels, mesh)
        step = steps.compile_train_step(detector, mesh)  # the step train.py runs
        # Fixed images per step index, the same on every device count (the --check compares them).
        rng = np.random.default_rng(0)
        total = args.warmup + args.steps
        batches = [
            parallel.global_batch({"image": rng.random((batch_size, patch, patch, channels), np.float32)}, mesh)
            for _ in range(min(total, 4))
        ]
        start = time.perf_counter()
        compiled = step.lower(state, batches[0], key, device_aux).compile()
        compile_s = time.perf_counter() - start
        losses, times = [], []
        for i in range(total):
            start = time.perf_counter()
            state, metrics = compiled(state, batches[i % len(batches)], jax.random.fold_in(key, i), device_aux)
            loss = float(metrics["loss"])  # waits for the step
            times.append(time.perf_counter() - start)
            losses.append(loss)
        step_s = float(np.median(times[args.warmup :]))
        return {
            "devices": n,
            "global_batch": batch_size,
            "per_device_batch": batch_size // n,
            "compile_s": round(compile_s, 2),
            "step_ms": round(step_s * 1e3, 3),
            "images_per_s": round(batch_size / step_s, 2),
            "losses": losses,
        }

    results = []
    for n in counts:
        results.append(run(n))
        r = results[-1]
        print(
            f"devices {r['devices']:3d} | global batch {r['global_batch']:5d} ({r['per_device_batch']}/device) | "
            f"step {r['step_ms']:9.2f} ms | {r['images_per_s']:9.1f} img/s | compile {r['compile_s']:.1f} s",
            flush=True,
        )
    base = results[0]
    for r in results:
        r["efficiency"] = round((r["images_per_s"] / r["devices"]) / (base["images_per_s"] / base["devices"]), 3)
    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    print(f"\n{device}{' (simulated devices share the same cores: timings are not scaling)' if args.simulate else ''}")
    print("devices  global  step ms    img/s  efficiency")
    for r in results:
        print(
            f"{r['devices']:7d} {r['global_batch']:7d} {r['step_ms']:8.2f} {r['images_per_s']:8.1f} "
            f"{r['efficiency']:10.3f}"
        )

    status = 0
    if args.check:
        same_batches = len({r["global_batch"] for r in results}) == 1
        if not same_batches:
            print("--check needs the same global batch on every device count (--global_batch)", file=sys.stderr)
            return 2
        reference = np.asarray(base["losses"])
        for r in results[1:]:
            losses = np.asarray(r["losses"])
            first_ok = np.allclose(losses[0], reference[0], rtol=args.first_rtol, atol=0)
            rest_ok = np.allclose(losses, reference, rtol=args.rtol, atol=0)
            worst = float(np.max(np.abs(losses - reference) / np.abs(reference)))
            ok = first_ok and rest_ok
            status = status or (0 if ok else 1)
            print(
                f"check {r['devices']} vs {base['devices']} devices: {'OK' if ok else 'MISMATCH'} "
                f"(largest relative loss difference {worst:.2e} over {len(losses)} steps, first step "
                f"{abs(losses[0] - reference[0]) / abs(reference[0]):.2e})"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device, "simulated": bool(args.simulate), "config": args.config, "results": results},
                f,
                indent=2,
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
