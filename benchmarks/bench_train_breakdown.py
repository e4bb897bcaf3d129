"""Where a train step's time goes: the step cut into nested pieces, each jitted and timed alone.

    python benchmarks/bench_train_breakdown.py [--config paper] [--size 256] [--out FILE]

  infer_eval    forward, BN with running statistics (the inference cost)
  forward_train forward, BN with batch statistics (train mode), loss
  grad          forward_train + backward (value_and_grad of the loss)
  step_no_synth grad + Adam + the non-finite guard, on ready-made synthetic inputs
  step          the full step train.py runs (steps.compile_train_step: adds synthesis from the key)
Differences between consecutive rows are the cost of each piece.

The pieces are built from the DRAEM detector's own parts (detectors.draem: its network, its
loss with every term of config.loss, TrainState.apply_gradients, the shared guard
`guard_nonfinite`), so together they are the step `detectors.build(config)` trains with.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench_model import DEFAULT_CHANNELS, ModelBench, load_config  # noqa: E402

from xray_flax import steps  # noqa: E402
from xray_flax.detectors.base import guard_nonfinite  # noqa: E402
from xray_flax.detectors.draem import network as draem_model  # noqa: E402
from xray_flax.detectors.draem.loss import draem_loss  # noqa: E402
from xray_flax.optim import make_optimizer  # noqa: E402
from xray_flax.synthesis import SynthesisSpec, synthesize_batch  # noqa: E402


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
    cfg = bench.config
    detector = bench.detector(args.size)
    # The parts detectors.draem.build puts into the detector's train step.
    model = draem_model.build_model(cfg.model, channels)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps)
    spec = SynthesisSpec.from_config(cfg.synthesis, channels)
    state = bench.fresh_state(args.size)
    images = bench.images(args.batch, args.size)
    textures = bench.aux(args.size)
    synthetic = jax.jit(lambda k: synthesize_batch(k, images, textures, spec))(jax.random.key(1))
    collections = state.collections

    def loss(params, collections):
        (rec, logits), upd = model.apply(
            {"params": params, **collections}, synthetic["image"], train=True, mutable=["batch_stats"]
        )
        total, terms = draem_loss(
            images,
            rec,
            logits,
            synthetic["mask"],
            ssim_weight=cfg.loss.ssim_weight,
            ssim_window=cfg.loss.ssim_window,
            ssim_sigma=cfg.loss.ssim_sigma,
            focal_gamma=cfg.loss.focal_gamma,
            focal_alpha=cfg.loss.focal_alpha,
        )
        return total, (terms, upd)

    grad = jax.value_and_grad(loss, has_aux=True)

    def step_without_synthesis(state, batch, key, aux):
        del batch, key, aux  # the synthetic batch is ready-made
        (_, (terms, upd)), g = grad(state.params, state.collections)
        new_state = state.apply_gradients(g, tx, collections={**state.collections, **upd})
        return new_state, dict(terms, grad_norm=optax.tree.norm(g))

    step_no_synth = guard_nonfinite(step_without_synthesis)
    key = jax.random.key(2)
    full = steps.compile_train_step(detector, bench.mesh, donate=False)  # every call starts from `state`
    pieces = [
        ("infer_eval", jax.jit(lambda v: model.apply(v, synthetic["image"], train=False)), (state.variables,)),
        ("forward_train", jax.jit(loss), (state.params, collections)),
        ("grad", jax.jit(grad), (state.params, collections)),
        ("step_no_synth", jax.jit(step_no_synth), (state, {"image": images}, key, textures)),
        ("step", full, (state, {"image": images}, key, textures)),
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
