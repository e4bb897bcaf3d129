#!/usr/bin/env python
"""Peer: a whole scan through the paper's DRAEM variant in PyTorch, end to end, on the CPU.

What a PyTorch user would write for a lab's large scan: read the 16-bit TIFF whole
(tifffile), scale to [0, 1], cut it into tiles (stride = patch * (1 - overlap), the last row
and column of tiles flush with the scan's edge), score them in batches with the network of
`unetpp_torch_bench.py` (eval mode, `torch.inference_mode`, softmax anomaly map), average the
overlapping tile maps into a float32 map (plain mean, anomalib's untiling), and write it as a
tiled zlib float32 TIFF. Random weights: the cost does not depend on their values.

    /tmp/peer/bin/python benchmarks/peer/whole_scan_torch.py --tiff scan.tif --out map.tif \
        --patch 64 --overlap 0 --width-multiplier 0.25 --batch 8

Prints one JSON line: seconds per stage (read, tile+map+stitch, write), tiles, tiles/s, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")

import bench_common as bc  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from unetpp_torch_bench import PaperDraem  # noqa: E402


def tile_origins(length: int, patch: int, stride: int) -> list[int]:
    """Origins covering [0, length): every `stride`, plus one flush with the end."""
    origins = list(range(0, max(length - patch, 0) + 1, stride))
    if origins[-1] + patch < length:
        origins.append(length - patch)
    return origins


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiff", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--overlap", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width-multiplier", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    bc.set_threads(args.threads)
    torch.manual_seed(0)
    model = PaperDraem(1, args.width_multiplier).eval()

    t0 = time.perf_counter()
    image = tifffile.imread(args.tiff).astype(np.float32) / 65535.0
    t_read = time.perf_counter() - t0

    h, w = image.shape
    stride = max(1, round(args.patch * (1 - args.overlap)))
    origins = [(y, x) for y in tile_origins(h, args.patch, stride) for x in tile_origins(w, args.patch, stride)]
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(origins), args.batch):
            chunk = origins[i : i + args.batch]
            tiles = np.stack([image[y : y + args.patch, x : x + args.patch] for y, x in chunk])
            _, maps = model(torch.from_numpy(tiles[:, None]))
            maps = maps.numpy()
            for (y, x), m in zip(chunk, maps):
                total[y : y + args.patch, x : x + args.patch] += m
                count[y : y + args.patch, x : x + args.patch] += 1
    amap = total / np.maximum(count, 1)
    t_map = time.perf_counter() - t0

    t0 = time.perf_counter()
    tifffile.imwrite(args.out, amap, tile=(256, 256), compression="zlib")
    t_write = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "side": "pytorch peer",
                "shape": [h, w],
                "tiles": len(origins),
                "read_s": round(t_read, 2),
                "map_and_stitch_s": round(t_map, 2),
                "write_s": round(t_write, 2),
                "tiles_per_s": round(len(origins) / t_map, 1),
                "peak_rss_gib": round(peak_rss_gib(), 2),
                "env": bc.env_info(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
