"""Peak memory of PaDiM's and PatchCore's fit at 1x, 4x, 16x the training tiles.

    .venv/bin/python benchmarks/bench_memory_bank.py [--models padim,patchcore] [--scales 1,4,16]
        [--base-tiles 1000] [--patch 64] [--batch 32] [--bank N --chunk N]
        [--coverage-tiles 1000] [--out benchmarks/results/memory_bank.json]

Each (model, scale) runs in a fresh subprocess, so `ru_maxrss` (the peak resident set of that
process, resource.getrusage) measures exactly one fit: build the detector from
configs/<model>_cpu.py (EfficientNet-Lite0, real weights from the installed package) with the
patch and batch given, initialise and load the backbone, then fit_init, fit_update over
base_tiles x scale synthetic tiles (smooth noise, generated batch by batch so the data never
accumulate; --source simulated: tiles cut from simulated clean radiographs instead, the time making
them reported apart and excluded from the fit time), fit_finish. Each child prints one JSON
line: peak RSS, RSS after the backbone is loaded, fit time, the fit summary, and what anomalib
would hold before its fit (every embedding stacked: PatchCore N x positions x D x 4 B, PaDiM
N x P x d x 4 B). Flat means the peak at 16x is within 10 % of the peak at 1x (the target; docs/performance.md).

--coverage-tiles N (PatchCore only) also measures the streamed coreset against the exact one on
real features: the first N clean training tiles of the configured data (the simulated
radiographs of configs/default.py unless overridden), every patch feature kept in memory (this
mode only), greedy k-centre on all of them vs the streamed coreset with the config's chunk;
coverage radius (max distance of any training feature to its nearest bank entry) of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)


def _config(model: str, patch: int, batch: int, bank: int | None, chunk: int | None, overrides=()):
    import importlib

    import yaml

    config = importlib.import_module(f"configs.{model}_cpu").get_config()
    if any(item.startswith("backbone.name=") for item in overrides):
        # Another backbone (e.g. resnet18, anomalib's): the paper config's taps for it.
        config = importlib.import_module(f"configs.{model}").get_config()
    for item in overrides:  # --set model.accumulate=float32
        key, value = item.split("=", 1)
        section, _, name = key.rpartition(".")
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        value = yaml.safe_load(value)
        target[name] = tuple(value) if isinstance(value, list) else value
    config.data.patch_size = patch
    config.data.stride = patch
    config.train.batch_size = batch
    if model == "patchcore":
        if bank:
            config.model.bank_size = bank
        if chunk:
            config.model.chunk_size = chunk
    return config


def synthetic_tiles(rng: np.random.Generator, batch: int, patch: int) -> np.ndarray:
    """[batch, patch, patch, 1] float32 in [0, 1]: smooth noise at two scales."""
    from xray_flax.data.sim_primitives import smooth_noise

    tiles = [
        0.5 + 0.15 * smooth_noise(rng, (patch, patch), 16.0) + 0.05 * smooth_noise(rng, (patch, patch), 3.0)
        for _ in range(batch)
    ]
    return np.clip(np.stack(tiles), 0.0, 1.0)[..., None].astype(np.float32)


def simulated_batches(batch: int, patch: int, scan_size: int, seed: int = 0):
    """Batches [batch, patch, patch, 1] of tiles cut (stride = patch) from simulated clean
    radiographs (xray_flax/data/simulate.py with no anomalies: the normal training data of a
    fit), 16-bit scans of scan_size x scan_size scaled by the bit depth, one scan at a time:
    the tiles never accumulate beyond one scan."""
    from xray_flax.data.readers import normalize
    from xray_flax.data.simulate import SimulationParams, simulate_scan

    params = SimulationParams(
        n_scans=1,
        height=scan_size,
        width=scan_size,
        paint_losses=0,
        white_spots=0,
        nails=0,
        foreign_objects=0,
        seed=seed,
    )
    pending, index = [], 0
    while True:
        scan, _ = simulate_scan(params, index)
        index += 1
        image = normalize(scan, 0, 65535)
        for y in range(0, scan_size - patch + 1, patch):
            for x in range(0, scan_size - patch + 1, patch):
                pending.append(image[y : y + patch, x : x + patch])
                if len(pending) == batch:
                    yield np.stack(pending)[..., None]
                    pending = []


def child(args) -> dict:
    import jax

    from xray_flax import backbones, detectors, parallel, steps

    config = _config(args.model, args.patch, args.batch, args.bank, args.chunk, args.set)
    detector = detectors.build(config)
    mesh = parallel.make_mesh(config.mesh)
    # --random-backbone: random weights (the cost does not depend on them; the peer side has none
    # either, the model hubs being unreachable).
    variables = steps.init_variables(
        detector, jax.random.key(0), args.patch, 1, mesh, pretrained=not args.random_backbone
    )
    jax.block_until_ready(variables)
    rss_loaded = _rss_mb()
    rng = np.random.default_rng(0)
    n_batches = -(-args.tiles // args.batch)
    scans = simulated_batches(args.batch, args.patch, args.scan_size) if args.source == "simulated" else None
    data_s = 0.0  # time making the tiles, excluded from the fit time
    start = time.perf_counter()
    state = detector.fit_init(variables)
    first = None
    for i in range(n_batches):
        valid = np.ones(args.batch, np.float32)
        valid[max(0, args.tiles - i * args.batch) :] = 0.0
        made = time.perf_counter()
        images = next(scans) if scans is not None else synthetic_tiles(rng, args.batch, args.patch)
        data_s += time.perf_counter() - made
        batch = {"image": images, "valid": valid}
        state = detector.fit_update(state, variables, parallel.global_batch(batch, mesh))
        # As the loop does (xray_flax/train.py _fit): the progress summary after every batch,
        # which also waits for it, so no batches queue up ahead of the device.
        if detector.fit_summary:
            detector.fit_summary(state)
        else:
            jax.block_until_ready(state)
        if first is None:
            jax.block_until_ready(state)
            first = time.perf_counter() - start - data_s
        if args.progress_every and (i + 1) % args.progress_every == 0:
            progress = {
                "tiles": min((i + 1) * args.batch, args.tiles),
                "fit_s": round(time.perf_counter() - start - data_s, 1),
                "data_s": round(data_s, 1),
                "peak_rss_mb": round(_peak_mb(), 1),
                **(detector.fit_summary(state) if detector.fit_summary else {}),
            }
            print(json.dumps(progress), file=sys.stderr, flush=True)
    jax.block_until_ready(state)
    summary = detector.fit_summary(state) if detector.fit_summary else {}
    fitted = detector.fit_finish(state, variables)
    jax.block_until_ready(fitted)
    seconds = time.perf_counter() - start - data_s
    plan = detector.fit_init.keywords["plan"]
    stride = plan.backbone.strides[plan.backbone.taps[0]]
    if args.model == "patchcore":
        positions, dim = (args.patch // stride) ** 2, plan.dim
    else:
        positions, dim = (args.patch // (stride * plan.pool)) ** 2, plan.n_features
    collections = {k: v for k, v in fitted.items() if k != backbones.COLLECTION}
    return {
        "model": args.model,
        "overrides": list(args.set),
        "tiles": args.tiles,
        "patch": args.patch,
        "batch": args.batch,
        "peak_rss_mb": round(_peak_mb(), 1),
        "rss_after_backbone_mb": round(rss_loaded, 1),
        "source": args.source,
        "scan_size": args.scan_size if args.source == "simulated" else None,
        "fit_s": round(seconds, 2),
        "data_s": round(data_s, 2),
        "first_batch_s": round(first or 0.0, 2),
        "tiles_per_s_after_first": round((args.tiles - args.batch) / max(seconds - (first or 0.0), 1e-9), 1),
        "summary": summary,
        "fitted_mb": round(sum(np.asarray(x).nbytes for x in jax.tree.leaves(collections)) / 2**20, 2),
        "anomalib_embeddings_mb": round(args.tiles * positions * dim * 4 / 2**20, 1),
    }


def coverage(args) -> dict:
    """Streamed vs exact coreset on real features (PatchCore, this process)."""
    import jax
    import jax.numpy as jnp

    from xray_flax import detectors, parallel, steps
    from xray_flax.data import pipeline
    from xray_flax.detectors.patchcore import steps as patchcore_steps
    from xray_flax.nn import coreset

    config = _config("patchcore", args.patch, args.batch, args.bank, args.chunk)
    detector = detectors.build(config)
    plan = detector.fit_init.keywords["plan"]
    mesh = parallel.make_mesh(config.mesh)
    variables = steps.init_variables(detector, jax.random.key(0), args.patch, config.data.channels, mesh)
    splits = pipeline.prepare_splits(config.data, None)
    embed = jax.jit(lambda v, x: patchcore_steps.embed(v, x, plan=plan))
    state, features, tiles = detector.fit_init(variables), [], 0
    for batch in pipeline.iterate_fit_batches(splits, config.data, batch_size=args.batch):
        if tiles >= args.coverage_tiles:
            break
        valid = batch["valid"].copy()
        valid[max(0, args.coverage_tiles - tiles) :] = 0.0
        batch = {"image": batch["image"], "valid": valid}
        tiles += int(valid.sum())
        x = np.asarray(embed(variables, jnp.asarray(batch["image"])))[valid > 0]
        features.append(x.reshape(-1, plan.dim))
        state = detector.fit_update(state, variables, parallel.global_batch(batch, mesh))
    features = np.concatenate(features)
    projection = None if plan.projection is None else jnp.asarray(plan.projection)
    start = time.perf_counter()
    streamed = jax.device_get(jax.jit(coreset.stream_finish)(state, projection))
    streamed_s = time.perf_counter() - start
    points = features if plan.projection is None else features @ plan.projection
    start = time.perf_counter()
    exact = jax.device_get(jax.jit(coreset.greedy_k_center, static_argnums=1)(points, plan.bank_size))
    exact_s = time.perf_counter() - start
    bank = streamed["bank"][streamed["bank_valid"]]
    bank_points = bank if plan.projection is None else bank @ plan.projection
    r_streamed = coreset.coverage_radius(points, bank_points)
    r_exact = coreset.coverage_radius(points, points[np.asarray(exact.indices)[np.asarray(exact.valid)]])
    return {
        "tiles": tiles,
        "patches": int(len(features)),
        "dim": plan.dim,
        "projected_dim": int(points.shape[1]),
        "bank_size": plan.bank_size,
        "chunk_size": plan.chunk_size,
        "reductions": int(streamed["reductions"]),
        "coverage_exact": round(r_exact, 4),
        "coverage_streamed": round(r_streamed, 4),
        "ratio_streamed_to_exact": round(r_streamed / r_exact, 4),
        "certified_bound_streamed": round(float(streamed["coverage_bound"]), 4),
        "exact_greedy_s": round(exact_s, 1),
        "last_reduction_s": round(streamed_s, 1),
    }


def _run_child(argv: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, __file__, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode:
        raise RuntimeError(f"child {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="padim,patchcore")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--base-tiles", type=int, default=1000)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bank", type=int, default=None, help="PatchCore bank size (default: the CPU config's)")
    parser.add_argument("--chunk", type=int, default=None, help="PatchCore buffer (default: the CPU config's)")
    parser.add_argument("--coverage-tiles", type=int, default=0)
    parser.add_argument(
        "--source",
        choices=("synthetic", "simulated"),
        default="synthetic",
        help="tiles: smooth noise (synthetic) or cut from simulated clean radiographs (simulated)",
    )
    parser.add_argument("--scan-size", type=int, default=2048, help="side of each simulated scan (--source simulated)")
    parser.add_argument("--progress-every", type=int, default=0, help="batches between progress lines (stderr)")
    parser.add_argument("--random-backbone", action="store_true", help="random backbone weights (speed comparisons)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default="")
    # child modes
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("--model", default="padim")
    parser.add_argument("--tiles", type=int, default=0)
    args = parser.parse_args()

    if args.child or args.coverage:
        print(json.dumps(coverage(args) if args.coverage else child(args)))
        return

    common = ["--patch", str(args.patch), "--batch", str(args.batch)]
    common += ["--bank", str(args.bank)] if args.bank else []
    common += ["--chunk", str(args.chunk)] if args.chunk else []
    common += [f"--set={item}" for item in args.set]
    common += ["--random-backbone"] if args.random_backbone else []
    common += ["--source", args.source, "--scan-size", str(args.scan_size)]
    result = {
        "what": "peak RSS of fit (one subprocess each) at scale x base tiles; flat = within 10 % of 1x",
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "memory_gb": _memory_gb()},
        "python": sys.version.split()[0],
        "runs": [],
        "flatness": {},
    }
    for model in args.models.split(","):
        runs = []
        for scale in [int(s) for s in args.scales.split(",")]:
            tiles = args.base_tiles * scale
            out = _run_child(["--child", "--model", model, "--tiles", str(tiles), *common], args.timeout)
            out["scale"] = scale
            print(json.dumps(out), flush=True)
            runs.append(out)
        result["runs"] += runs
        peaks = [r["peak_rss_mb"] for r in runs]
        result["flatness"][model] = {
            "peak_rss_mb": peaks,
            "max_over_min": round(max(peaks) / min(peaks), 4),
            "flat_within_10pct": bool(max(peaks) <= 1.10 * peaks[0]),
        }
    if args.coverage_tiles:
        out = _run_child(["--coverage", "--coverage-tiles", str(args.coverage_tiles), *common], args.timeout)
        print(json.dumps(out), flush=True)
        result["coverage"] = out
    print(json.dumps(result["flatness"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
