"""Peak memory of predict-style whole-scan inference on a large 16-bit TIFF.

    .venv/bin/python benchmarks/bench_predict_memory.py [--height 5000 --width 3000]
        [--patch 512 --stride 256 --batch 8] [--memmap] [--no-report] [--tiff PATH]

Writes a tiled 16-bit TIFF (unless --tiff is given), then runs, in a fresh subprocess so
`ru_maxrss` measures only this work: open the scan lazily (data.readers.open_scan), stitch
an anomaly map with a cheap jitted anomaly_fn (1 - tile, so the result can be checked
exactly), then the report steps predict runs (regions, overlay PNG, float32 TIFF map, HTML report). Prints one JSON
line: peak resident memory (MiB) after imports and at the end, timings, map error.

The target is a peak under 2 GB for a 5000 x 3000 scan: stitching keeps one band of tiles,
so memory grows with the scan's width, not its area (plus the float32 output map, 4 bytes
per pixel, or nothing resident with --memmap).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_test_tiff(path: str, height: int, width: int, tile: int = 256) -> None:
    """Smooth 16-bit gradient + texture, tiled and zlib-compressed like archival scans,
    written band by band so the writer itself stays small."""
    import tifffile

    def bands():
        rows = 256
        for y0 in range(0, height, rows):
            yy, xx = np.mgrid[y0 : min(height, y0 + rows), 0:width].astype(np.float32)
            values = 0.5 + 0.25 * np.sin(xx / 97.0) * np.cos(yy / 131.0) + 0.1 * (yy / height)
            yield np.round(np.clip(values, 0, 1) * 65535).astype(np.uint16)

    def tiles():
        # tifffile wants tiles in order: cut each band of `tile` rows into tile x tile blocks.
        buffer = np.zeros((0, width), np.uint16)
        for band in bands():
            buffer = np.concatenate([buffer, band])
            while buffer.shape[0] >= tile:
                yield from _row_tiles(buffer[:tile], tile)
                buffer = buffer[tile:]
        if buffer.shape[0]:
            yield from _row_tiles(buffer, tile)

    tifffile.imwrite(
        path,
        tiles(),
        shape=(height, width),
        dtype=np.uint16,
        tile=(tile, tile),
        compression="zlib",
        photometric="minisblack",
    )


def _row_tiles(rows: np.ndarray, tile: int):
    padded = np.zeros((tile, -(-rows.shape[1] // tile) * tile), np.uint16)
    padded[: rows.shape[0], : rows.shape[1]] = rows
    for x0 in range(0, padded.shape[1], tile):
        yield padded[:, x0 : x0 + tile]


def open_reader(path: str):
    from xray_flax.data import readers

    return readers.open_scan(path, channels=1, normalization="bit_depth"), "xray_flax.data.readers"


def peak_rss_mib() -> float:
    """Peak resident memory of this process since it started.

    Linux carries ru_maxrss over execve (it would report the parent's peak, e.g. a test
    runner's), so read the address space's own high-water mark, VmHWM, where it exists.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args) -> dict:
    import jax
    import jax.numpy as jnp

    from xray_flax.data import tiling
    from xray_flax.report import html, overlay, regions, stitch

    t_start = time.perf_counter()
    reader, reader_kind = open_reader(args.tiff)

    @jax.jit
    def anomaly_fn(tiles):
        return 1.0 - tiles[..., 0]

    anomaly_fn(jnp.zeros((args.batch, args.patch, args.patch, reader.channels), jnp.float32)).block_until_ready()
    rss_after_imports = peak_rss_mib()

    out = None
    if args.memmap:
        out = np.lib.format.open_memmap(
            os.path.join(args.workdir, "map.npy"), mode="w+", dtype=np.float32, shape=(reader.height, reader.width)
        )
    t0 = time.perf_counter()
    amap = stitch.stitch_anomaly_map(reader, anomaly_fn, args.patch, args.stride, args.batch, out=out)
    stitch_seconds = time.perf_counter() - t0
    rss_after_stitch = peak_rss_mib()

    # Correctness: 1 - image, checked on rows spread over the scan (band reads, cheap).
    errors = []
    for y in np.linspace(0, reader.height - 1, 7).astype(int):
        expected = 1.0 - reader.read_region(int(y), 0, 1, reader.width)[0, :, 0]
        errors.append(float(np.abs(amap[y] - expected).max()))

    t0 = time.perf_counter()
    report_seconds = None
    n_regions = None
    if not args.no_report:
        found = regions.find_regions(amap, 0.6, min_area=64, max_regions=50)
        n_regions = len(found)
        regions.write_regions_json(os.path.join(args.workdir, "regions.json"), found)
        overlay.write_overlay_png(os.path.join(args.workdir, "overlay.png"), reader, amap, max_side=2048, regions=found)
        overlay.write_anomaly_map(os.path.join(args.workdir, "map.tif"), amap)
        html.write_scan_report(
            os.path.join(args.workdir, "report.html"), reader, amap, found, title="bench", max_side=1024
        )
        report_seconds = time.perf_counter() - t0
    # The grid stitch_anomaly_map tiles with.
    n_tiles = len(tiling.tile_starts(reader.height, args.patch, args.stride, "shift")) * len(
        tiling.tile_starts(reader.width, args.patch, args.stride, "shift")
    )
    return {
        "height": reader.height,
        "width": reader.width,
        "patch": args.patch,
        "stride": args.stride,
        "batch": args.batch,
        "tiles": n_tiles,
        "reader": reader_kind,
        "memmap_output": bool(args.memmap),
        "jax_backend": jax.default_backend(),
        "peak_rss_mib_after_imports": round(rss_after_imports, 1),
        "peak_rss_mib_after_stitch": round(rss_after_stitch, 1),
        "peak_rss_mib_end": round(peak_rss_mib(), 1),
        "stitch_seconds": round(stitch_seconds, 2),
        "report_seconds": None if report_seconds is None else round(report_seconds, 2),
        "regions": n_regions,
        "max_abs_map_error": max(errors),
        "total_seconds": round(time.perf_counter() - t_start, 2),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=5000)
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--patch", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memmap", action="store_true", help="stitch into a .npy memmap instead of RAM")
    parser.add_argument("--no-report", action="store_true", help="stitch only (no regions/overlay/HTML)")
    parser.add_argument("--tiff", help="existing 16-bit TIFF to use instead of writing one")
    parser.add_argument("--workdir", help="where to write outputs (default: a temporary directory)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        result = child(args)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        tiff = args.tiff
        if tiff is None:
            tiff = os.path.join(workdir, f"scan_{args.height}x{args.width}_u16.tif")
            t0 = time.perf_counter()
            write_test_tiff(tiff, args.height, args.width)
            print(
                f"wrote {tiff} ({os.path.getsize(tiff) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            "--tiff",
            tiff,
            "--workdir",
            workdir,
            "--patch",
            str(args.patch),
            "--stride",
            str(args.stride),
            "--batch",
            str(args.batch),
        ]
        command += ["--memmap"] * args.memmap + ["--no-report"] * args.no_report
        env = dict(os.environ)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"benchmark child failed ({done.returncode}):\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
