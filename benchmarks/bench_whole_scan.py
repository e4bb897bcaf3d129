"""Whole-scan predict on the CPU, end to end: what a lab without a GPU runs most.

    .venv/bin/python benchmarks/bench_whole_scan.py --out benchmarks/results/whole_scan.json \
        --workdir paper_cpu_default=workdirs/default --workdir padim_scans=workdirs/my_scans \
        [--height 9000 --width 12000] [--overlap 0] [--peer-python /tmp/peer/bin/python]

Writes a 16-bit tiled, zlib-compressed TIFF of HEIGHT x WIDTH (the scanner format of
`bench_predict_memory.py`; `--scan` uses an existing one), then for every trained workdir runs
the command a user runs, `python -m xray_flax.main --workdir DIR --mode predict --inputs SCAN`,
under `/usr/bin/time -v`: read, tile, map, stitch, and write the float32 map TIFF, the overlay
PNG, the regions and the HTML report. With `--peer-python`, the PyTorch peer
(`benchmarks/peer/whole_scan_torch.py`: the paper's DRAEM variant at the width of the first
workdir's model, read whole, tile, map, average, write the map TIFF) on the same scan and tiles.
Wall clock and peak RSS are the whole process's (imports and compilation included); tiles per
second divide the tiles of the grid by that wall clock, so they understate the steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from bench_predict_memory import write_test_tiff
from common import env_info

from xray_flax.data import tiling
from xray_flax.evaluation_config import resolve_stride

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(command: list[str], log_path: str) -> dict:
    """Runs `command` under /usr/bin/time -v; wall seconds, peak RSS (GiB), exit status."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(["/usr/bin/time", "-v", *command], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - t0
    with open(log_path) as f:
        text = f.read()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); its output: {log_path}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "returncode": done.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None,
        "log": log_path,
        "stdout_tail": text[-1500:],
    }


def grid_tiles(height: int, width: int, patch: int, stride: int) -> int:
    """Tiles of predict's grid (xray_flax/report/stitch.py tiles with 'shift' starts)."""
    return len(tiling.tile_starts(height, patch, stride, "shift")) * len(
        tiling.tile_starts(width, patch, stride, "shift")
    )


def add_tile_rate(row: dict, shape: tuple[int, int]) -> None:
    """The grid's tiles and tiles per second of wall clock, into a timed run's `row`."""
    row["tiles"] = grid_tiles(*shape, row["patch"], row["stride"])
    row["tiles_per_s"] = round(row["tiles"] / row["wall_s"], 1)


def workdir_settings(workdir: str, overlap: float) -> dict:
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    patch = int(config["data"]["patch_size"])
    return {
        "method": config.get("method", ""),
        "detector": config.get("detector", ""),
        "patch": patch,
        "stride": resolve_stride(0, overlap, patch),
        "batch": int(config["eval"]["predict"]["batch_size"]),
        "width_multiplier": float(config.get("model", {}).get("width_multiplier", 1.0)),
    }


def ours(label: str, workdir: str, scan: str, shape: tuple[int, int], overlap: float, out_dir: str, logs: str) -> dict:
    settings = workdir_settings(workdir, overlap)
    command = [
        sys.executable,
        "-m",
        "xray_flax.main",
        "--workdir",
        workdir,
        "--mode",
        "predict",
        "--inputs",
        scan,
        "--output_dir",
        os.path.join(out_dir, label),
        f"--config.eval.predict.overlap={overlap}",
    ]
    row = {"side": "xray_flax", "label": label, "workdir": workdir, **settings, "command": " ".join(command)}
    row.update(timed_run(command, os.path.join(logs, f"{label}.log")))
    add_tile_rate(row, shape)
    # predict logs each scan's own seconds (read, tile, map, stitch, write; without the imports
    # and the checkpoint restore, with the first batch's compilation, seconds on a large scan).
    scan_seconds = re.search(r": \d+ regions, max score [-\d.e+]+, ([\d.]+)s ->", row["stdout_tail"])
    if scan_seconds:
        row["scan_s"] = float(scan_seconds.group(1))
        row["tiles_per_s_scan"] = round(row["tiles"] / row["scan_s"], 1)
    return row


def peer(python: str, scan: str, shape, overlap: float, settings: dict, out_dir: str, logs: str) -> dict:
    command = [
        python,
        os.path.join(REPO, "benchmarks", "peer", "whole_scan_torch.py"),
        "--tiff",
        scan,
        "--out",
        os.path.join(out_dir, "peer_map.tif"),
        "--patch",
        str(settings["patch"]),
        "--overlap",
        str(overlap),
        "--batch",
        str(settings["batch"]),
        "--width-multiplier",
        str(settings["width_multiplier"]),
    ]
    row = {"side": "pytorch peer", "label": "paper_model_torch", **settings, "command": " ".join(command)}
    row.update(timed_run(command, os.path.join(logs, "peer.log")))
    add_tile_rate(row, shape)
    return row


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON results; the logs and outputs go beside it")
    parser.add_argument("--workdir", action="append", default=[], help="LABEL=DIR of a trained workdir (repeat)")
    parser.add_argument("--height", type=int, default=9000)
    parser.add_argument("--width", type=int, default=12000)
    parser.add_argument("--scan", help="an existing 16-bit TIFF instead of writing one")
    parser.add_argument("--work", help="keep the scan and the outputs here (default: a temporary folder)")
    parser.add_argument("--overlap", type=float, default=0.0, help="config.eval.predict.overlap for every run")
    parser.add_argument("--peer-python", help="python of the torch venv (benchmarks/peer/setup_peer_venv.sh)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # The maps, overlays and reports of a 12,000 x 9,000 scan take ~1 GB: a scratch folder
    # (--work, or a temporary one removed at the end); the runs' logs go beside the JSON.
    logs = os.path.splitext(os.path.abspath(args.out))[0] + "_logs"
    os.makedirs(logs, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.work or scratch
        os.makedirs(out_dir, exist_ok=True)
        run_all(args, out_dir, logs)


def run_all(args, out_dir: str, logs: str) -> None:
    scan = args.scan or os.path.join(out_dir, f"scan_{args.height}x{args.width}_u16.tif")
    if not os.path.exists(scan):
        t0 = time.perf_counter()
        write_test_tiff(scan, args.height, args.width)
        print(f"wrote {scan} ({os.path.getsize(scan) / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    shape = (args.height, args.width)
    rows = []
    for item in args.workdir:
        label, _, workdir = item.partition("=")
        rows.append(ours(label, os.path.abspath(workdir), scan, shape, args.overlap, out_dir, logs))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stdout_tail"}), flush=True)
    if args.peer_python and args.workdir:
        # The peer is the paper's DRAEM variant: it copies the first workdir's tiles and width.
        settings = workdir_settings(os.path.abspath(args.workdir[0].partition("=")[2]), args.overlap)
        if settings["detector"] != "draem":
            raise SystemExit(
                f"--peer-python: the first --workdir must be the paper's model, not {settings['detector']}"
            )
        rows.append(peer(args.peer_python, scan, shape, args.overlap, settings, out_dir, logs))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stdout_tail"}), flush=True)
    result = {"scan": scan, "shape": list(shape), "overlap": args.overlap, "env": env_info(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
