"""Cost of the synthetic-anomaly generator per patch, as JSON.

    python benchmarks/bench_synthesis.py [--sizes 128 512] [--batch 8]
        [--channels 1] [--modes map vmap] [--repeats 5] [--dtd_root ROOT]
        [--json OUT.json]

For each (patch size, batch mode, anomaly probability) it compiles
synthesize_batch once, then times `repeats` calls with fresh keys and reports
the median milliseconds per patch. anomaly_probability 0.5 is the training
default; 1.0 is the worst case (every sample pays for mask, texture and
augmentations). Machine, load and date go into the JSON so numbers from
different runs can be told apart.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

from xray_flax import synthesis


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        jax=jax.__version__,
        python=sys.version.split()[0],
        date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def time_one(spec, images, bank, repeats: int) -> dict:
    run = synthesis.synthesize_batch
    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(0), images, bank, spec))
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.key(i + 1), images, bank, spec))
        times.append(time.perf_counter() - start)
    batch = images.shape[0]
    return dict(
        compile_s=round(compile_s, 2),
        ms_per_patch_median=round(1e3 * statistics.median(times) / batch, 3),
        ms_per_patch_min=round(1e3 * min(times) / batch, 3),
        ms_per_batch_median=round(1e3 * statistics.median(times), 2),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--modes", nargs="+", default=["map", "vmap"], choices=["map", "vmap"])
    parser.add_argument("--probabilities", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtd_root", default="")
    parser.add_argument("--json", default="", help="also write the result here")
    args = parser.parse_args(argv)

    cfg = synthesis.defaults()
    cfg.dtd_root = args.dtd_root
    base = synthesis.SynthesisSpec.from_config(cfg, args.channels)
    rng = np.random.default_rng(0)
    results = []
    for size in args.sizes:
        bank = jax.device_put(synthesis.load_texture_bank(cfg, size, args.channels))
        images = jax.device_put(rng.random((args.batch, size, size, args.channels), np.float32))
        for mode in args.modes:
            for probability in args.probabilities:
                spec = dataclasses.replace(base, batch_mode=mode, anomaly_probability=probability)
                row = dict(
                    patch_size=size,
                    batch=args.batch,
                    channels=args.channels,
                    batch_mode=mode,
                    anomaly_probability=probability,
                    **time_one(spec, images, bank, args.repeats),
                )
                print(json.dumps(row), file=sys.stderr, flush=True)
                results.append(row)
    report = dict(
        benchmark="synthesis.synthesize_batch",
        machine=machine(),
        spec=dataclasses.asdict(base),
        dtd_root=args.dtd_root,
        bank_size=None if not args.dtd_root else int(bank.shape[0]),
        results=results,
    )
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
