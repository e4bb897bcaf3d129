#!/usr/bin/env python
"""Merge bench JSONs into a markdown table with achieved GFLOP/s as a fraction of the ceiling.

Usage:
  python benchmarks/peer/summarize.py --peak benchmarks/results/cpu_peak.json \
      benchmarks/results/draem_torch.json benchmarks/results/unetpp_torch.json [more.json ...]
Any JSON with the same schema (model, env, params, flops_per_image, results[mode,size,batch,
median_s_per_image, gflop_per_image]) can be added, e.g. a JAX implementation's output.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--peak", required=True)
    p.add_argument("files", nargs="+")
    a = p.parse_args()
    peak = json.load(open(a.peak))
    ceil = peak["matmul_ceiling_gflop_per_s"]
    torch_mm = max((r["gflop_per_s"] for r in peak["results"] if r["framework"] == "torch"), default=None)
    print(
        "| model | mode | size | batch | s/image (median) | images/s | GFLOP/image | achieved GFLOP/s "
        "| % of matmul ceiling | % of torch matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f in a.files:
        d = json.load(open(f))
        name = d["model"].split(":")[0]
        for r in d["results"]:
            g = r.get("gflop_per_image")
            ach = r.get("achieved_gflop_per_s")
            frac = f"{100 * ach / ceil:.0f}%" if ach and ceil else "-"
            frac_t = f"{100 * ach / torch_mm:.0f}%" if ach and torch_mm else "-"
            print(
                f"| {name} | {r['mode']} | {r['size']} | {r['batch']} | {r['median_s_per_image']:.3f} | "
                f"{r['images_per_s']:.3f} | {g:.1f} | {ach:.1f} | {frac} | {frac_t} |"
                if g is not None
                else f"| {name} | {r['mode']} | {r['size']} | {r['batch']} | {r['median_s_per_image']:.3f} | "
                f"{r['images_per_s']:.3f} | - | - | - | - |"
            )


if __name__ == "__main__":
    main()
