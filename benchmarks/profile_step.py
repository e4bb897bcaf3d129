"""Per-op profile of the compiled train step (or inference): where the time goes, by kind of op.

    python benchmarks/profile_step.py [--config paper] [--size 256] [--mode train|infer]
                                      [--calls 3] [--out FILE.json] [--md FILE.md]

Runs the same compiled step as bench_model.py under `jax.profiler.trace`, reads the Perfetto
trace it writes (one event per executed XLA thunk, named by its HLO instruction), and joins each
event with that instruction in the optimized HLO (`compiled.as_text()`), so every millisecond is
put in one bucket:

  conv                 3x3 convolutions computing activations (YNNPACK fusions)
  conv input grad      convolutions of the backward pass computing d(loss)/d(input)
  conv weight grad     convolutions whose window is a row block (narrow layers) and the nine
                       matmuls of wide layers (nn/layers.py: the two weight-gradient paths)
  ssim filters         the 11-tap Gaussian filters of the SSIM loss (plain `convolution`s)
  reductions           fusions with a reduce (BatchNorm statistics and their backward sums, loss)
  elementwise          other fusions (BN apply, activations and their masks, Adam, concat)
  gather / scatter     upsampling and its transpose
  copies, transposes   layout changes (e.g. activations into the layout a weight-gradient conv wants)
  other                the rest

Each (phase, kind) cell gets its thunk time per call and its share; the slowest instructions
are listed with their shapes. Phases come from the op_name metadata JAX writes into the HLO
(forward, backward, optimizer and guard, synthesis). Thunk times are per thunk, from start to
end: XLA:CPU runs independent thunks concurrently on its thread pool, so their sum is larger
than the wall time of a call, and the shares are shares of thunk time, not of wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
from bench_model import DEFAULT_CHANNELS, ModelBench, load_config  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+(\w[\w\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(instructions of ENTRY: name -> (shape, opcode, line), computations: name -> body lines)."""
    computations, current, entry = {}, None, None
    for line in text.splitlines():
        if line.rstrip().endswith("{") and "=" not in line.split("{")[0].split("(")[0]:
            m = _COMPUTATION.match(line)
            if m:
                current = m.group(1)
                computations[current] = []
                if line.lstrip().startswith("ENTRY"):
                    entry = current
                continue
        if line.strip() == "}":
            current = None
            continue
        if current is not None:
            computations[current].append(line)
    instructions = {}
    for line in computations.get(entry, []):
        m = _INSTR.match(line)
        if m:
            instructions[m.group(1)] = (m.group(2), m.group(3), line)
    return instructions, computations


def _body(line: str, computations: dict, depth: int = 0) -> list[str]:
    """The lines of the computation an instruction calls, nested calls included."""
    out = []
    for name in _CALLS.findall(line):
        for inner in computations.get(name, []):
            out.append(inner)
            if depth < 3:
                out.extend(_body(inner, computations, depth + 1))
    return out


_OP_NAME = re.compile(r'op_name="([^"]*)"')


def phase_of(lines: list[str]) -> str:
    """Which part of the step a group of HLO lines comes from, by the majority of their op_names
    (JAX writes the tracing path there: jvp(...) is the forward of a differentiated function,
    transpose(jvp(...)) its backward)."""
    votes = collections.Counter()
    for line in lines:
        for name in _OP_NAME.findall(line):
            if "synthesize_batch" in name:
                votes["synthesis"] += 1
            elif "transpose(jvp(" in name:
                votes["backward"] += 1
            elif "jvp(" in name:
                votes["forward"] += 1
            else:
                votes["optimizer, guard"] += 1
    return votes.most_common(1)[0][0] if votes else "optimizer, guard"


def classify(name: str, instructions: dict, computations: dict) -> tuple[str, str, str]:
    """(phase, kind, short description) of one ENTRY instruction."""
    if name not in instructions:
        return "optimizer, guard", "other", name
    shape, opcode, line = instructions[name]
    body = _body(line, computations) if opcode in ("fusion", "call", "custom-call") else [line]
    phase = phase_of(body + [line])
    convs = [b for b in body if " convolution(" in b]
    if convs:
        conv = convs[0]
        out_shape = conv.split("=", 1)[1].split()[0]
        window = re.search(r"window=\{size=([\dx]+)", conv)
        window = window.group(1) if window else "?"
        what = f"{out_shape} window {window}"
        if window == "11" or window.startswith("11x") or window.endswith("x11"):
            return phase, "ssim filters", what
        if window not in ("3x3", "1x1", "?"):
            # A weight gradient contracts over the pixels of a row block: the window is the block.
            return "backward", "conv weight grad", what
        if "transpose(jvp(" in " ".join(_OP_NAME.findall(conv)):
            return "backward", "conv input grad", what
        return phase, "conv", what
    text = " ".join(body)
    if opcode == "dot" or " dot(" in text:
        # The model's only matmuls are the nine-tap weight gradients of wide layers (layers.py).
        return phase, ("conv weight grad" if phase == "backward" else "matmul"), f"dot {shape}"
    if opcode in ("gather", "scatter") or " gather(" in text or " scatter(" in text:
        return phase, "gather / scatter", f"{opcode} {shape}"
    if opcode in ("copy", "transpose") or name.startswith(("transpose_copy", "bitcast_copy", "copy")):
        return phase, "copies, transposes", f"{opcode} {shape}"
    if " reduce(" in text or opcode in ("reduce", "reduce-window"):
        return phase, "reductions", f"{opcode} {shape}"
    if opcode == "fusion" or opcode in (
        "add",
        "multiply",
        "select",
        "maximum",
        "dynamic-update-slice",
        "concatenate",
        "slice",
        "pad",
        "broadcast",
    ):
        return phase, "elementwise", f"{opcode} {shape}"
    return phase, "other", f"{opcode} {shape}"


def thunk_times(trace_dir: str, module_prefix: str) -> tuple[dict, int]:
    """{hlo instruction: total seconds} over all runs of the module, and the number of runs."""
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"no perfetto trace under {trace_dir}")
    with gzip.open(paths[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals, runs = collections.defaultdict(float), set()
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") != "X" or "hlo_op" not in args:
            continue
        if not str(args.get("hlo_module", "")).startswith(module_prefix):
            continue
        totals[args["hlo_op"]] += float(e["dur"]) * 1e-6
        runs.add(args.get("run_id"))
    return totals, len(runs)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="paper")
    p.add_argument("--compute-dtype", default="float32")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--wait-idle", type=float, default=60, help="seconds to wait for an idle CPU first")
    p.add_argument("--out", default=None, help="JSON file")
    p.add_argument("--md", default=None, help="Markdown table file")
    args = p.parse_args(argv)

    channels = DEFAULT_CHANNELS.get(args.config, 1)
    bench = ModelBench(load_config(args.config, args.compute_dtype, channels))
    make = bench.make_train if args.mode == "train" else bench.make_infer
    call, info = make(args.batch, args.size)
    compiled = bench.last_compiled
    call()  # warm-up
    trace_dir = tempfile.mkdtemp(prefix="xray_profile_")
    try:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            times, load = common.time_calls(call, 0, args.calls, wait_idle_s=args.wait_idle)
        hlo_text = compiled.as_text()
        module = re.search(r"HloModule\s+([\w.\-]+)", hlo_text).group(1)
        totals, runs = thunk_times(trace_dir, module.split(".")[0])
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    if runs == 0:
        raise SystemExit("the trace holds no thunk events of the step (profiler off in this jaxlib?)")
    instructions, computations = parse_hlo(hlo_text)

    per_call = sorted(((t / runs, name) for name, t in totals.items()), reverse=True)
    cells = collections.defaultdict(float)
    count = collections.Counter()
    top = []
    for seconds, name in per_call:
        phase, kind, what = classify(name, instructions, computations)
        cells[(phase, kind)] += seconds
        count[(phase, kind)] += 1
        if len(top) < args.top:
            top.append({"hlo": name, "phase": phase, "kind": kind, "what": what, "ms_per_call": seconds * 1e3})
    profiled = sum(cells.values())
    wall = float(sorted(times)[len(times) // 2])
    phases = collections.defaultdict(float)
    kinds = collections.defaultdict(float)
    for (phase, kind), v in cells.items():
        phases[phase] += v
        kinds[kind] += v
    result = {
        "env": common.env_info({"bench": "profile_step"}),
        "config": args.config,
        "mode": args.mode,
        "size": args.size,
        "batch": args.batch,
        "compute_dtype": args.compute_dtype,
        "runs_traced": runs,
        "wall_s_per_call_under_profiler": wall,
        "thunk_s_per_call": profiled,
        "xla_flops_per_call": info.get("xla_flops_per_call"),
        "max_foreign_cpu_frac": load["max_foreign_cpu_frac"],
        "cells": [
            {"phase": ph, "kind": k, "s_per_call": v, "share": v / profiled, "instructions": count[(ph, k)]}
            for (ph, k), v in sorted(cells.items(), key=lambda kv: -kv[1])
        ],
        "phases": {k: v for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
        "kinds": {k: v for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top": top,
    }
    phase_names = list(result["phases"])
    lines = [
        f"Profile: {args.config} {args.mode}, {args.size} px, batch {args.batch}, {args.compute_dtype}; "
        f"{wall:.3f} s per call under the profiler, {profiled:.3f} s in XLA thunks "
        f"({runs} calls traced). Milliseconds per call:",
        "",
        "| kind | " + " | ".join(phase_names) + " | total | share |",
        "|---|" + "---|" * (len(phase_names) + 2),
    ]
    for kind, total in result["kinds"].items():
        row = [f"{cells[(ph, kind)] * 1e3:.0f}" if (ph, kind) in cells else "" for ph in phase_names]
        lines.append(f"| {kind} | " + " | ".join(row) + f" | {total * 1e3:.0f} | {total / profiled:.1%} |")
    lines.append(
        "| **total** | "
        + " | ".join(f"{result['phases'][ph] * 1e3:.0f}" for ph in phase_names)
        + f" | {profiled * 1e3:.0f} | 100% |"
    )
    lines += ["", "| slowest instructions | phase | kind | ms per call | what |", "|---|---|---|---|---|"]
    for t in top:
        lines.append(f"| `{t['hlo']}` | {t['phase']} | {t['kind']} | {t['ms_per_call']:.1f} | `{t['what']}` |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
