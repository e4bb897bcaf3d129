"""Train-step and inference time per image of our STFPM, Reverse Distillation, FastFlow, CS-Flow and CFA.

    python benchmarks/bench_baselines.py --out benchmarks/results/baselines_speed_ours.json
        [--models stfpm,reverse_distillation,fastflow,csflow,cfa] [--size 256] [--train-batches 1,8]
        [--infer-batches 1,8] [--warmup 1] [--repeats 5] [--backbone resnet18] [--skip-train] [--skip-infer]
        [--max-foreign 0.05] [--wait-idle 900]
    python benchmarks/bench_baselines.py --table OURS_JSON ANOMALIB_JSON    # markdown, times nothing

The JAX side of benchmarks/peer/anomalib_baselines_bench.py (anomalib 2.7's torch models of the same
five methods); docs/performance.md "Baselines vs anomalib" puts the two side by side.

Each model is `xray_flax.detectors.build(config)` of `configs/<name>.py` (the paper's / anomalib's
settings) with three overrides so that both sides run the same network on the same input:
`config.backbone.name = --backbone` (ResNet-18, the taps of the config kept) for every model but
CS-Flow, which stays on EfficientNet-B5 as anomalib's is hard-wired to it; `config.data.patch_size =
--size`; `config.data.channels = 3` (anomalib's models take RGB).

Train = one call of `steps.compile_train_step(detector, mesh)` — the step train.py runs (forward,
loss, backward, the detector's own optax update, behind the non-finite guard) — on a one-device
mesh, with the state from `steps.init_train_state(..., pretrained=False)`: random backbone weights
(no weights file needed; the cost is the same), donated so the call updates it in place.
Infer = jitted `detector.anomaly_map` (the map at the input size, blurred as the detector does) plus
the image score (the detector's own "score", else the max of the map, as anomalib's forward returns).
Backbone = the frozen backbone's forward alone (`Backbone.features`, up to the deepest tap, one scale;
CS-Flow's step runs it on 3 scales), at the inference batches: which share of a step is the backbone.
Compile time is reported apart and never timed.

Timing rule and contention guard: benchmarks/common.py (warmup untimed calls, median of `repeats`
timed calls, calls during which other processes used the CPUs are redone). FLOPs per image: XLA's
cost analysis of the compiled executable (all ops; the torch side counts conv/matmul only).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
import traceback

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from bench_model import xla_flops  # noqa: E402

from xray_flax import backbones, detectors, parallel, steps  # noqa: E402
from xray_flax.config_base import get_base_config  # noqa: E402

MODELS = ("stfpm", "reverse_distillation", "fastflow", "csflow", "cfa")
FIXED_BACKBONE = {"csflow": "efficientnet_b5"}  # anomalib's CS-Flow is hard-wired to EfficientNet-B5


def load_config(name: str, size: int, backbone: str) -> tuple[ml_collections.ConfigDict, str]:
    """configs/<name>.py with the backbone, patch size and channels of the comparison, and where it came from.

    Without configs/<name>.py: `xray_flax.config_base.get_base_config(name)`, i.e. the detector's own defaults
    (which are the same paper / anomalib settings), said so in the JSON."""
    if os.path.exists(os.path.join(_ROOT, "configs", f"{name}.py")):
        config, source = importlib.import_module(f"configs.{name}").get_config(), f"configs/{name}.py"
    else:
        config, source = (
            get_base_config(name),
            f"xray_flax.config_base.get_base_config({name!r}) (no configs/{name}.py)",
        )
    if config.detector != name:
        raise SystemExit(f"configs/{name}.py builds detector {config.detector!r}, expected {name!r}")
    config.backbone.name = FIXED_BACKBONE.get(name, backbone)
    config.data.patch_size = size
    config.data.channels = 3
    return config, source


def images(batch: int, size: int, mesh) -> jax.Array:
    x = np.random.default_rng(0).random((batch, size, size, 3), np.float32)
    return jax.device_put(x, parallel.batch_sharded(mesh))


def make_train(detector, mesh, batch: int, size: int, start_step: int = 0):
    """The compiled train step on a fresh state whose step counter starts at `start_step` (CFA: past
    its memory-bank steps, so that the descriptor's AdamW step is timed, as anomalib's is)."""
    step = steps.compile_train_step(detector, mesh)
    aux = parallel.replicate(detector.make_aux(), mesh) if detector.make_aux is not None else None
    x = images(batch, size, mesh)
    state = steps.init_train_state(detector, jax.random.key(0), size, 3, mesh, pretrained=False)
    state = state.replace(step=jax.device_put(jnp.asarray(start_step, state.step.dtype), state.step.sharding))
    holder = {"state": state, "i": 0}
    t0 = time.perf_counter()
    compiled = step.lower(holder["state"], {"image": x}, jax.random.key(0), aux).compile()
    info = {"compile_s": time.perf_counter() - t0, "xla_flops_per_call": xla_flops(compiled)}

    def call():
        holder["i"] += 1
        holder["state"], metrics = compiled(holder["state"], {"image": x}, jax.random.key(holder["i"]), aux)
        jax.block_until_ready((holder["state"], metrics))
        return metrics

    return call, info


def make_infer(detector, mesh, batch: int, size: int):
    variables = steps.init_variables(detector, jax.random.key(0), size, 3, mesh, pretrained=False)

    def infer(variables, x):
        out = detector.anomaly_map(variables, x)
        score = out["score"] if "score" in out else jnp.max(out["map"], axis=(1, 2))
        return out["map"], score

    x = images(batch, size, mesh)
    t0 = time.perf_counter()
    compiled = jax.jit(infer).lower(variables, x).compile()
    info = {"compile_s": time.perf_counter() - t0, "xla_flops_per_call": xla_flops(compiled)}
    return (lambda: jax.block_until_ready(compiled(variables, x))), info


def make_backbone(config, mesh, batch: int, size: int):
    """The detector's frozen backbone alone (`Backbone.features` up to its deepest tap, inference mode), jitted."""
    backbone = backbones.build(config.backbone, 3)
    detector = detectors.build(config)
    variables = steps.init_variables(detector, jax.random.key(0), size, 3, mesh, pretrained=False)[backbones.COLLECTION]
    x = images(batch, size, mesh)
    t0 = time.perf_counter()
    compiled = jax.jit(backbone.features).lower(variables, x).compile()
    info = {"compile_s": time.perf_counter() - t0, "xla_flops_per_call": xla_flops(compiled)}
    return (lambda: jax.block_until_ready(compiled(variables, x))), info


def param_counts(detector, size: int) -> dict:
    variables = detector.abstract_variables(size, 3)

    def count(tree):
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))

    return {
        "trainable": count(variables.get("params", {})),
        "by_collection": {k: count(v) for k, v in variables.items()},
    }


def bench_model(name: str, args, mesh) -> dict:
    config, source = load_config(name, args.size, args.backbone)
    detector = detectors.build(config)
    if detector.kind != detectors.GRADIENT and not args.skip_train:
        raise SystemExit(f"{name}: detector kind {detector.kind!r} has no train step")
    counts = param_counts(detector, args.size)
    # CFA's first model.memory_bank_steps train steps build its memory bank (anomalib: on_train_start,
    # untimed on its side too): time the training steps after them.
    start_step = int(config.model.get("memory_bank_steps", 0)) if "model" in config else 0
    print(
        f"[ours {name}] backbone {config.backbone.name} taps {tuple(config.backbone.taps)}; "
        f"trainable params {counts['trainable']:,}; collections {counts['by_collection']}",
        flush=True,
    )
    plan = []
    if not args.skip_train:
        plan += [("train", b) for b in common.parse_list(args.train_batches)]
    if not args.skip_infer:
        plan += [("infer", b) for b in common.parse_list(args.infer_batches)]
    if not args.skip_backbone:
        plan += [("backbone", b) for b in common.parse_list(args.infer_batches)]
    rows, flops = [], {}
    for mode, batch in plan:
        if mode == "train":
            fn, info = make_train(detector, mesh, batch, args.size, start_step)
        elif mode == "infer":
            fn, info = make_infer(detector, mesh, batch, args.size)
        else:
            fn, info = make_backbone(config, mesh, batch, args.size)
        times, contention = common.time_calls(
            fn, args.warmup, args.repeats, max_foreign=args.max_foreign, wait_idle_s=args.wait_idle
        )
        row = {
            "mode": mode,
            "size": args.size,
            "batch": batch,
            "warmup": args.warmup,
            "repeats": args.repeats,
            **common.summarize(times, batch),
            **contention,
            "compile_s": info["compile_s"],
        }
        if info["xla_flops_per_call"]:
            flops[f"{mode}@{args.size}"] = info["xla_flops_per_call"] / batch
            row["gflop_per_image"] = info["xla_flops_per_call"] / batch / 1e9
            row["achieved_gflop_per_s"] = row["gflop_per_image"] / row["median_s_per_image"]
        rows.append(row)
        print(
            f"[ours {name}] {mode} size={args.size} batch={batch}: {row['median_s_per_call']:.3f} s/call, "
            f"{row['median_s_per_image']:.3f} s/img (calls {', '.join(f'{t:.3f}' for t in times)}; "
            f"compile {info['compile_s']:.1f} s; max foreign {row['max_foreign_cpu_frac']:.3f}, "
            f"discarded {len(row['discarded_calls'])}, waited {row['waited_for_idle_s']} s)",
            flush=True,
        )
        del fn
        gc.collect()
    return {
        "model": f"ours {name}",
        "framework": "jax",
        "config": source,
        "timed_from_step": start_step,
        "overrides": {"backbone.name": config.backbone.name, "data.patch_size": args.size, "data.channels": 3},
        "backbone": config.backbone.to_dict(),
        "model_config": config.model.to_dict() if "model" in config else {},
        "optim_config": config.optim.to_dict() if "optim" in config else {},
        "params": counts,
        "flops_per_image": flops,
        "flop_source": "XLA cost_analysis of the compiled executable (all ops), per image",
        "results": rows,
    }


def compare_table(ours_path: str, anomalib_path: str) -> str:
    """Markdown tables (one per model) of the two JSONs: ratio = anomalib's time / ours (> 1: ours faster)."""
    with open(ours_path) as f:
        ours = json.load(f)
    with open(anomalib_path) as f:
        peer = json.load(f)
    lines = []
    for name in MODELS:
        a, b = ours["models"].get(name), peer["models"].get(name)
        if a is None and b is None:
            continue
        lines.append(f"\n#### {name}\n")
        for side, m in (("ours", a), ("anomalib", b)):
            if m is None or "error" in m:
                lines.append(f"{side}: {'not run' if m is None else m['error']}\n")
        if not a or not b or "error" in a or "error" in b:
            continue
        peer_trainable = b["params"].get("trainable_with_grad") or b["params"]["trainable"]
        lines.append(f"Trainable parameters: ours {a['params']['trainable']:,}, anomalib {peer_trainable:,}.\n")
        lines.append(
            "| step | batch | ours s/call | ours s/image | anomalib s/call | anomalib s/image | ratio | compile s |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        peer_rows = {(r["mode"], r["size"], r["batch"]): r for r in b["results"]}
        for r in a["results"]:
            q = peer_rows.get((r["mode"], r["size"], r["batch"]))
            if q is None:
                continue
            ratio = q["median_s_per_call"] / r["median_s_per_call"]
            lines.append(
                f"| {r['mode']} | {r['batch']} | {r['median_s_per_call']:.3f} | {r['median_s_per_image']:.3f} | "
                f"{q['median_s_per_call']:.3f} | {q['median_s_per_image']:.3f} | **{ratio:.2f}** "
                f"| {r.get('compile_s', float('nan')):.0f} |"
            )
    return "\n".join(lines) + "\n"


def appended(report: dict, path: str | None) -> dict:
    """--append: the models already in `path` are kept (a model run now replaces its entry); each
    sitting's env is listed under "sittings"."""
    if not path or not os.path.exists(path):
        return {**report, "sittings": [report["env"]]}
    with open(path) as f:
        old = json.load(f)
    sittings = old.get("sittings", [old["env"]]) + [report["env"]]
    return {**report, "env": old["env"], "sittings": sittings, "models": dict(old.get("models", {}))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--append", action="store_true", help="keep the other models already in --out (a rerun of some)")
    p.add_argument("--backbone", default="resnet18", help="backbone of every model but CS-Flow (EfficientNet-B5)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--train-batches", default="1,8")
    p.add_argument("--infer-batches", default="1,8")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--skip-backbone", action="store_true", help="skip the rows of the frozen backbone's forward alone")
    p.add_argument("--max-foreign", type=float, default=0.05)
    p.add_argument("--wait-idle", type=float, default=900.0)
    p.add_argument("--out", default=None)
    p.add_argument(
        "--table", nargs=2, metavar=("OURS_JSON", "ANOMALIB_JSON"), help="print the comparison, time nothing"
    )
    args = p.parse_args(argv)
    if args.table:
        print(compare_table(*args.table))
        return {}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; choose from {', '.join(MODELS)}")

    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": 1}))  # one device, as bench_model.py
    report = {"side": "ours", "env": common.env_info({"x64": bool(jax.config.jax_enable_x64)}), "models": {}}
    report = appended(report, args.out) if args.append else report
    for name in models:
        try:
            report["models"][name] = bench_model(name, args, mesh)
        except SystemExit:
            raise
        except Exception as e:  # keep the other models' numbers; the JSON says what failed
            traceback.print_exc()
            report["models"][name] = {"model": f"ours {name}", "error": f"{type(e).__name__}: {e}"}
        common.write_json(args.out, report)  # after each model, so a long run keeps what it has
        gc.collect()
    return report


if __name__ == "__main__":
    main()
