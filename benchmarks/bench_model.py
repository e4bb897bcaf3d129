"""Train-step and inference time per image of a detector config, in the peers' JSON format.

    python benchmarks/bench_model.py --config paper --out benchmarks/results/paper_jax.json
        [--compute-dtype float32|bfloat16] [--channels N] [--train-sizes 256] [--train-batches 1]
        [--infer-sizes 256,512] [--infer-batches 1] [--warmup 1] [--repeats 5]
        [--skip-train] [--skip-infer] [--max-foreign 0.05] [--wait-idle 900]

Train = one call of `steps.compile_train_step(detector, mesh)`, the step train.py runs, on a
one-device mesh: the detector's train step (anomaly synthesis from the key, forward in train
mode (BN batch statistics), SSIM + L2 + focal loss, backward, Adam) behind the non-finite
guard, with the texture bank of `detector.make_aux()` at the timed patch size; the state is
donated, so the call updates it in place.  (The PyTorch peer's step has no synthesis: ours
pays for it, see bench_synthesis.py for its share.)
Infer = jitted `detector.anomaly_map` (eval-mode forward, softmax anomaly map, clipped
reconstruction) and the max score per image.

FLOPs per image come from XLA's cost analysis of the compiled executable
(`jit(f).lower(...).compile().cost_analysis()['flops']`, divided by the batch). XLA counts
every op (elementwise, reductions, pooling too), the peers count conv/matmul only; the
difference is small for these conv nets and is recorded as `peer_style_note`.
Runs on whatever backend jax picks (CPU here; a GPU runs the same code).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from xray_flax import config_files, detectors, parallel, steps  # noqa: E402

MODEL_NAMES = {"paper": "paper DRAEM variant (JAX/Flax)", "draem": "DRAEM (JAX/Flax)"}
DEFAULT_CHANNELS = {"paper": 1, "draem": 3}  # the peers: 1-channel paper model, stock 3-channel DraemModel


def xla_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def load_config(name: str, compute_dtype: str, channels: int):
    config = config_files.load(os.path.join(config_files.CONFIGS_DIR, f"{name}.py")).get_config()
    config.model.compute_dtype = compute_dtype
    config.data.channels = channels
    return config


class ModelBench:
    """Compiles and runs the train step / inference of one config at a given (batch, size).

    Everything comes from the detector `detectors.build(config)` makes, as in train.py; the
    patch size of the config is set to the timed size (the texture bank is made at it).
    """

    def __init__(self, config):
        self.config = config
        self.channels = config.data.channels
        self.mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1}))  # one device
        self._detectors = {}
        self.last_compiled = None  # the latest make_train/make_infer executable (profile_step.py)

    def detector(self, size: int) -> detectors.Detector:
        """The config's detector, built with data.patch_size = size."""
        if size not in self._detectors:
            config = copy.deepcopy(self.config)
            config.data.patch_size = size
            self._detectors[size] = detectors.build(config)
        return self._detectors[size]

    def aux(self, size: int):
        """The detector's auxiliary step inputs at this size (DRAEM: its texture bank), replicated."""
        make_aux = self.detector(size).make_aux
        return parallel.replicate(make_aux(), self.mesh) if make_aux is not None else None

    def images(self, batch: int, size: int) -> jax.Array:
        images = np.random.default_rng(0).random((batch, size, size, self.channels), np.float32)
        return jax.device_put(images, parallel.batch_sharded(self.mesh))

    def fresh_state(self, size: int) -> detectors.TrainState:
        return steps.init_train_state(self.detector(size), jax.random.key(0), size, self.channels, self.mesh)

    def num_params(self) -> int:
        params = self.detector(self.config.data.patch_size).abstract_variables(64, self.channels)["params"]
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

    def make_train(self, batch: int, size: int) -> tuple[callable, dict]:
        step = steps.compile_train_step(self.detector(size), self.mesh)
        aux = self.aux(size)
        images = self.images(batch, size)
        holder = {"state": self.fresh_state(size), "i": 0}
        t0 = time.perf_counter()
        compiled = step.lower(holder["state"], {"image": images}, jax.random.key(0), aux).compile()
        info = {"compile_s": time.perf_counter() - t0, "xla_flops_per_call": xla_flops(compiled)}
        self.last_compiled = compiled

        def call():
            holder["i"] += 1
            holder["state"], metrics = compiled(holder["state"], {"image": images}, jax.random.key(holder["i"]), aux)
            jax.block_until_ready((holder["state"], metrics))

        return call, info

    def make_infer(self, batch: int, size: int) -> tuple[callable, dict]:
        detector = self.detector(size)
        variables = steps.init_variables(detector, jax.random.key(0), size, self.channels, self.mesh)

        def infer(variables, images):
            out = detector.anomaly_map(variables, images)
            return out, jnp.max(out["map"], axis=(1, 2))

        images = self.images(batch, size)
        t0 = time.perf_counter()
        compiled = jax.jit(infer).lower(variables, images).compile()
        info = {"compile_s": time.perf_counter() - t0, "xla_flops_per_call": xla_flops(compiled)}
        self.last_compiled = compiled
        return (lambda: jax.block_until_ready(compiled(variables, images))), info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="paper", choices=sorted(MODEL_NAMES))
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--train-sizes", default="256")
    p.add_argument("--train-batches", default="1")
    p.add_argument("--infer-sizes", default="256,512")
    p.add_argument("--infer-batches", default="1")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--max-foreign", type=float, default=0.05)
    p.add_argument("--wait-idle", type=float, default=900.0)
    p.add_argument("--cache-dir", default="", help="persistent XLA compilation cache (second run: no recompile)")
    p.add_argument("--compile-only", action="store_true", help="record compile times and FLOPs, time nothing")
    p.add_argument("--tag", default="", help="appended to the model name, e.g. an XLA flag being tried")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    channels = args.channels or DEFAULT_CHANNELS[args.config]
    config = load_config(args.config, args.compute_dtype, channels)
    bench = ModelBench(config)
    plan = []
    if not args.skip_train:
        plan += [
            ("train", s, b) for s in common.parse_list(args.train_sizes) for b in common.parse_list(args.train_batches)
        ]
    if not args.skip_infer:
        plan += [
            ("infer", s, b) for s in common.parse_list(args.infer_sizes) for b in common.parse_list(args.infer_batches)
        ]

    name = f"{MODEL_NAMES[args.config]} {args.compute_dtype}{(' ' + args.tag) if args.tag else ''}"
    rows, flops = [], {}
    for mode, size, batch in plan:
        fn, info = (bench.make_train if mode == "train" else bench.make_infer)(batch, size)
        if args.compile_only:
            rows.append(
                {
                    "mode": mode,
                    "size": size,
                    "batch": batch,
                    "compile_s": info["compile_s"],
                    "xla_flops_per_call": info["xla_flops_per_call"],
                    "cache_dir": args.cache_dir,
                }
            )
            print(
                f"[{MODEL_NAMES[args.config]}] {mode} size={size} batch={batch}: compile {info['compile_s']:.1f} s",
                flush=True,
            )
            continue
        times, contention = common.time_calls(
            fn, args.warmup, args.repeats, max_foreign=args.max_foreign, wait_idle_s=args.wait_idle
        )
        row = {
            "mode": mode,
            "size": size,
            "batch": batch,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "compute_dtype": args.compute_dtype,
            **common.summarize(times, batch),
            **contention,
            "compile_s": info["compile_s"],
        }
        if info["xla_flops_per_call"]:
            flops[f"{mode}@{size}"] = info["xla_flops_per_call"] / batch
            row["gflop_per_image"] = info["xla_flops_per_call"] / batch / 1e9
            row["achieved_gflop_per_s"] = row["gflop_per_image"] / row["median_s_per_image"]
        rows.append(row)
        print(
            f"[{name}] {mode} size={size} batch={batch}: {row['median_s_per_image']:.3f} s/img "
            f"(calls {', '.join(f'{t:.3f}' for t in times)}; compile {info['compile_s']:.1f} s; "
            f"max foreign {row['max_foreign_cpu_frac']:.3f}, discarded {len(row['discarded_calls'])})",
            flush=True,
        )
        del fn
        gc.collect()

    report = {
        "model": name,
        "config": f"configs/{args.config}.py",
        "channels": channels,
        "compute_dtype": args.compute_dtype,
        "env": common.env_info({"x64": bool(jax.config.jax_enable_x64)}),
        "params": {"total": bench.num_params()},
        "flops_per_image": flops,
        "flop_source": "XLA cost_analysis of the compiled step (all ops), per image",
        "peer_style_note": "peers count conv/matmul FLOPs only (torch FlopCounterMode)",
        "results": rows,
    }
    common.write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
