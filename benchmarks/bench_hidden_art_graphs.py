"""Cost of the superpixel-graph Siamese per painting: SLIC graph building and one GAT train step.

    python benchmarks/bench_hidden_art_graphs.py --out benchmarks/results/hidden_art_graphs.json
        [--sizes 256,512] [--n-segments 5000] [--bands 8] [--batch 8] [--arch gat] [--heads 4]
        [--warmup 1] [--repeats 5] [--max-foreign 0.05] [--wait-idle 900]
    python benchmarks/bench_hidden_art_graphs.py --sizes 64 --n-segments 100 --bands 2 --batch 2 \
        --repeats 2 --wait-idle 0          # a quick check that the script runs

Input: simulated paintings (`xray_flax.hidden_art.simulate`, the family's default data) at each
size, `--bands` bands. Two timings per size:

* graphs: host side, per painting, `gnn.scene_graphs`: one SLIC segmentation of the RGB
  (`graphs.segment`, n_segments and compactness as given) and the RGB graph plus one graph per
  band on it (node features, 8-connected region adjacency, edge weights). Reported per painting.
* train step: one jitted `gnn.train_step` (forward of the RGB and every band graph, contrastive
  loss, backward, AdamW update) on a batch of `--batch` paintings padded with
  `graphs.padded_sizes(..., multiple=64)`; the state is donated. Reported per step and per
  painting (step / batch). Compilation is timed apart and never counted.

The graph sizes (nodes, directed edges per painting) go into the JSON with each row, so a time can
be read against the graph it was measured on. Timing rule and contention guard: benchmarks/common.py
(warmup untimed calls, median of `repeats` timed calls, calls during which other processes used the
CPUs are redone, machine info and load in the JSON).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import common  # noqa: E402

from xray_flax.detectors.base import TrainState  # noqa: E402
from xray_flax.hidden_art import gnn, graphs, simulate  # noqa: E402


def bench_size(size: int, args) -> dict:
    params = simulate.SimulationParams(size=size, n_bands=args.bands, n_scenes=args.batch, n_val=0)
    scenes = [simulate.simulate_scene(params, i) for i in range(args.batch)]
    build = functools.partial(gnn.scene_graphs, n_segments=args.n_segments, compactness=args.compactness)

    # Graph building: one painting per call, cycling through the batch.
    counter = iter(range(10**9))

    def one_painting():
        build(scenes[next(counter) % len(scenes)])

    times, contention = common.time_calls(
        one_painting, args.warmup, args.repeats, max_foreign=args.max_foreign, wait_idle_s=args.wait_idle
    )
    row = {"size": size, "bands": args.bands, "n_segments": args.n_segments, "compactness": args.compactness}
    row["graphs"] = {**common.summarize(times, 1), "contention": contention}

    items = [build(s) for s in scenes]
    sizes = graphs.padded_sizes([it["rgb"] for it in items], len(items), multiple=64)
    batch = jax.device_put(gnn.collate(items, sizes))
    row["graph_sizes"] = {
        "nodes_per_painting": [int(it["rgb"].n_node[0]) for it in items],
        "directed_edges_per_painting": [int(it["rgb"].n_edge[0]) for it in items],
        "padded": {"n_node": sizes[0], "n_edge": sizes[1], "n_graph": sizes[2]},
    }

    model = {"arch": args.arch, "heads": args.heads}
    tx = gnn.optimizer()
    state = TrainState.create(gnn.init(jax.random.key(0), batch, **model), tx)
    step = jax.jit(functools.partial(gnn.train_step, tx=tx, **model), donate_argnums=(0,))
    start = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state, "i": 0}

    def one_step():
        holder["i"] += 1
        holder["state"], metrics = compiled(holder["state"], batch, jax.random.key(holder["i"]))
        jax.block_until_ready(metrics["loss"])

    times, contention = common.time_calls(
        one_step, args.warmup, args.repeats, max_foreign=args.max_foreign, wait_idle_s=args.wait_idle
    )
    row["train_step"] = {
        **model,
        "batch": args.batch,
        "compile_s": round(compile_s, 2),
        **common.summarize(times, args.batch),
        "contention": contention,
    }
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="", help="write the JSON here (also printed)")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--n-segments", type=int, default=graphs.DEFAULT_N_SEGMENTS)
    parser.add_argument("--compactness", type=float, default=graphs.DEFAULT_COMPACTNESS)
    parser.add_argument("--bands", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="paintings per train step (the reference's 8)")
    parser.add_argument("--arch", default="gat", choices=gnn.ARCHS)
    parser.add_argument("--heads", type=int, default=gnn.DEFAULT_HEADS)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-foreign", type=float, default=0.05)
    parser.add_argument("--wait-idle", type=float, default=900.0, help="seconds to wait for an idle machine; 0 = never")
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be >= 2 (the contrastive loss's negatives come from another painting)")

    report = {
        "benchmark": "hidden_art graphs: SLIC graph building and a GNN train step per painting",
        "env": common.env_info({"sizes": args.sizes}),
        "rows": [],
    }
    for size in common.parse_list(args.sizes):
        row = bench_size(size, args)
        report["rows"].append(row)
        print(
            f"size {size}: graphs {row['graphs']['median_s_per_call'] * 1e3:.1f} ms/painting "
            f"({np.mean(row['graph_sizes']['nodes_per_painting']):.0f} nodes), {args.arch} step "
            f"{row['train_step']['median_s_per_image'] * 1e3:.1f} ms/painting "
            f"(batch {args.batch}, compile {row['train_step']['compile_s']} s)",
            file=sys.stderr,
            flush=True,
        )
        common.write_json(args.out, report)  # after each size, so a long run keeps what it has
    return report


if __name__ == "__main__":
    main()
