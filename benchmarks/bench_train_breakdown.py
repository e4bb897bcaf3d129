"""Where a train step's time goes: the step cut into nested pieces, each jitted and timed alone.

    python benchmarks/bench_train_breakdown.py [--config paper] [--size 256] [--out FILE]

  infer_eval    forward, BN with running statistics (the inference cost)
  forward_train forward, BN with batch statistics (train mode), loss
  grad          forward_train + backward (value_and_grad of the loss)
  step_no_synth grad + Adam + the non-finite guard, on ready-made synthetic inputs
  step          the full steps.train_step (adds anomaly synthesis from the key)
Differences between consecutive rows are the cost of each piece.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench_model import DEFAULT_CHANNELS, ModelBench, load_config  # noqa: E402

from xray_flax import losses, steps  # noqa: E402
from xray_flax.anomaly import load_texture_bank, synthesize_batch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="paper")
    p.add_argument("--compute-dtype", default="float32")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wait-idle", type=float, default=60)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    channels = DEFAULT_CHANNELS[args.config]
    bench = ModelBench(load_config(args.config, args.compute_dtype, channels))
    model, tx, cfg = bench.model, bench.tx, bench.config
    state = bench.fresh_state(args.size)
    images = jnp.asarray(np.random.default_rng(0).random((args.batch, args.size, args.size, channels), np.float32))
    textures = jnp.asarray(load_texture_bank(cfg.anomaly, args.size, channels))
    synthetic = jax.jit(lambda k: synthesize_batch(k, images, textures, bench.spec))(jax.random.key(1))

    def loss(params, batch_stats):
        (rec, logits), upd = model.apply(
            {"params": params, "batch_stats": batch_stats}, synthetic["image"], train=True, mutable=["batch_stats"]
        )
        total, _ = losses.draem_loss(images, rec, logits, synthetic["mask"], ssim_weight=cfg.loss.ssim_weight)
        return total, upd

    grad = jax.value_and_grad(loss, has_aux=True)

    def step_no_synth(params, batch_stats, opt_state):
        (total, upd), g = grad(params, batch_stats)
        updates, opt_state = tx.update(g, opt_state, params)
        finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(g))
        new = optax.apply_updates(params, updates)
        return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, params), upd, opt_state

    full = functools.partial(steps.train_step, model=model, tx=tx, spec=bench.spec, loss_config=cfg.loss)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    pieces = [
        ("infer_eval", jax.jit(lambda v: model.apply(v, synthetic["image"], train=False)), (variables,)),
        ("forward_train", jax.jit(loss), (state.params, state.batch_stats)),
        ("grad", jax.jit(grad), (state.params, state.batch_stats)),
        ("step_no_synth", jax.jit(step_no_synth), (state.params, state.batch_stats, state.opt_state)),
        ("step", jax.jit(full), (state, {"image": images}, textures, jax.random.key(2))),
    ]
    rows = []
    for name, fn, fn_args in pieces:
        times, info = common.time_calls(
            lambda fn=fn, fn_args=fn_args: jax.block_until_ready(fn(*fn_args)),
            1,
            args.repeats,
            wait_idle_s=args.wait_idle,
        )
        med = float(np.median(times))
        rows.append(
            {
                "piece": name,
                "median_s_per_call": med,
                "max_foreign_cpu_frac": info["max_foreign_cpu_frac"],
                "all_s_per_call": times,
            }
        )
        print(f"{name:14s} {med:7.3f} s  (foreign {info['max_foreign_cpu_frac']:.3f})", flush=True)
    common.write_json(
        args.out,
        {
            "benchmark": "train step breakdown",
            "config": args.config,
            "size": args.size,
            "batch": args.batch,
            "compute_dtype": args.compute_dtype,
            "env": common.env_info(),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
