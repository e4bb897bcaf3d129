"""Input-pipeline benchmark: patches/s delivered and peak resident memory.

    .venv/bin/python benchmarks/bench_pipeline.py [--size 20000] [--workdir /tmp/xray_bench]

1. Writes a SIZE x SIZE 16-bit tiled TIFF (512x512 tiles, zlib) once, tile by tile, so the
   writer never holds the scan in memory either.
2. In a fresh process per measurement (so peak RSS belongs to that measurement alone):
   * tile-all: every 512x512 tile of the scan through `iterate_eval_batches` (table build with
     the background rule, which reads every tile once, then reading every tile again);
   * train-wN: the shuffled training iterator with N Grain worker processes, for a fixed time.
   * default: the default CPU run's setting (64 px patches from the simulated 16-bit PNGs).
   Peak RSS is the largest sum of RSS over the process and its workers, sampled every 50 ms
   (and ru_maxrss of the main process as a cross-check).
3. Prints a table and writes <workdir>/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import cpu_name  # noqa: E402  (jax is imported lazily there)


def write_big_tiff(path: str, size: int, tile: int = 512) -> float:
    """A painting-like 16-bit scan (smooth density + grain + noise, dark film margin)."""
    import tifffile

    start = time.perf_counter()
    n = -(-size // tile)
    margin = int(0.03 * size)

    def tiles():
        rng = np.random.default_rng(0)
        for ty in range(n):
            for tx in range(n):
                yy, xx = np.mgrid[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile].astype(np.float32)
                v = 0.45 + 0.2 * np.sin(yy / 1500.0) * np.cos(xx / 2100.0) + 0.03 * np.sin(xx / 7.0)
                v += 0.01 * rng.standard_normal((tile, tile), dtype=np.float32)
                outside = (yy < margin) | (xx < margin) | (yy >= size - margin) | (xx >= size - margin)
                v[outside] = 0.02
                yield (np.clip(v, 0, 1) * 60000 + 1500).astype(np.uint16)

    tmp = path + ".tmp"
    tifffile.imwrite(
        tmp,
        tiles(),
        shape=(size, size),
        dtype=np.uint16,
        tile=(tile, tile),
        bigtiff=True,
        compression="zlib",
        compressionargs={"level": 1},
    )
    os.replace(tmp, path)
    return time.perf_counter() - start


class PeakRss:
    """Samples the RSS of this process plus its children (Grain workers)."""

    def __init__(self, interval=0.05):
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self):
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        self.peak = max(self.peak, total)

    def _run(self, interval):
        while not self._stop.is_set():
            self._sample()
            time.sleep(interval)

    def stop(self):
        self._sample()
        self._stop.set()
        self._thread.join()
        return self.peak


def _scan_config(scan_dir, workers):
    from xray_flax.data import config as data_config_lib

    c = data_config_lib.defaults()
    c.source, c.root = "scans", scan_dir
    c.patch_size, c.stride, c.border = 512, 512, "shift"
    c.split_fractions = (1.0, 0.0, 0.0)  # one scan: everything is "train"
    c.workers, c.prefetch, c.read_threads = workers, 2, 2
    return c


def child(mode: str, scan_dir: str, seconds: float, workers: int, cache_dir: str) -> dict:
    from xray_flax.data import pipeline

    rss = PeakRss()
    t0 = time.perf_counter()
    out = {"mode": mode, "workers": workers}
    if mode == "tile-all":
        c = _scan_config(scan_dir, workers)
        splits = pipeline.prepare_splits(c, None)
        n = pipeline.count_tiles(splits, "train", c)
        out["table_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        seen = 0
        for b in pipeline.iterate_eval_batches(splits, "train", c, batch_size=8):
            seen += len(b["label"])
            assert b["image"].dtype == np.float32
        out.update(tiles=n, delivered=seen, read_s=time.perf_counter() - t1)
        out["patches_per_s"] = seen / out["read_s"]
    else:
        if mode == "default":
            from xray_flax.data import config as data_config_lib

            c = data_config_lib.defaults()
            c.simulated.cache_dir = cache_dir
            c.workers = workers
            batch = 32
        else:
            c = _scan_config(scan_dir, workers)
            batch = 8
        splits = pipeline.prepare_splits(c, None)
        it = pipeline.make_train_iterator(splits, c, batch_size=batch, seed=0)
        next(it)  # start-up (tile table, worker start) is reported separately
        out["startup_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        seen = 0
        while time.perf_counter() - t1 < seconds:
            seen += len(next(it)["image"])
        out["patches_per_s"] = seen / (time.perf_counter() - t1)
        out["patch"] = int(c.patch_size)
    out["peak_rss_mb"] = rss.stop() / 2**20
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=20000)
    p.add_argument("--workdir", default="/tmp/xray_bench")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--child", default="")
    p.add_argument("--child_workers", type=int, default=0)
    args = p.parse_args()
    scan_dir = os.path.join(args.workdir, f"scan{args.size}")
    cache_dir = os.path.join(args.workdir, "simulated")
    if args.child:
        from absl import flags

        flags.FLAGS.mark_as_parsed()
        print(json.dumps(child(args.child, scan_dir, args.seconds, args.child_workers, cache_dir)))
        return

    os.makedirs(scan_dir, exist_ok=True)
    tiff = os.path.join(scan_dir, "scan.tif")
    results = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "size": args.size,
        "runs": [],
    }
    if not os.path.isfile(tiff):
        results["write_s"] = write_big_tiff(tiff, args.size)
    results["tiff_mb"] = os.path.getsize(tiff) / 2**20

    runs = [("tile-all", 0)] + [("train", int(w)) for w in args.workers.split(",")] + [("default", 0)]
    for mode, workers in runs:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            mode,
            "--child_workers",
            str(workers),
            "--size",
            str(args.size),
            "--workdir",
            args.workdir,
            "--seconds",
            str(args.seconds),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{mode} failed")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results["runs"].append(r)
        print(json.dumps(r), flush=True)

    with open(os.path.join(args.workdir, "bench_pipeline.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(
        f"\n{results['machine']}, {results['date']}; {args.size}^2 16-bit tiled TIFF "
        f"({results['tiff_mb']:.0f} MB on disk)"
    )
    print("| run | workers | patch | patches/s | peak RSS (MB, all processes) |")
    print("|---|---|---|---|---|")
    for r in results["runs"]:
        print(
            f"| {r['mode']} | {r['workers']} | {r.get('patch', 512)} | {r['patches_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
