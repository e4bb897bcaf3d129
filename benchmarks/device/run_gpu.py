"""Everything a borrowed GPU machine should run, in one go of at most --budget-s seconds.

    python3 benchmarks/device/run_gpu.py --out DIR [--budget-s 480] [--dry-run] [--parts a,b,...]

Writes DIR/summary.json (every part: its status, seconds, result or the reason it was skipped or
failed; every timed row with its device, dtype, batch, median ms and its ratio to the PyTorch
peer's same row) and DIR/pytest.log. Parts, in the order they run (the most wanted first, so
that a short budget drops the least wanted):

  env            devices, versions (jax, jaxlib, flax, torch, CUDA, ...), nvidia-smi
  kernels        which form of each per-platform kernel (nn/layers.py, nn/depthwise.py) the
                 machine lowers: the XLA:CPU-only forms must be off on a GPU
  pytest         the tests marked `gpu` (pyproject.toml's markers) on this machine
  paper          the paper's model (configs/paper.py: DRAEM with Nested U-Net + U-Net) at 512 px:
                 train step and inference, fp32 and bf16 (ours)
  paper_peer     the same rows of the PyTorch UNet++ peer (benchmarks/peer/unetpp_torch_bench.py)
  draem, draem_peer            DRAEM (configs/draem.py, 3 channels, 256 px) and its PyTorch peer
  baseline, baseline_peer      STFPM on ResNet-18 at 256 px and its PyTorch peer
  patchcore      PatchCore's fit rate in tiles/s (configs/patchcore.py, WRN50-2, random weights)

Each part runs in a process of its own (a crash or an out-of-memory in one is recorded and the
others still run) under its own time budget, cut to what is left of --budget-s; a part that
would start with less than its minimum left is skipped with the reason recorded, and so is a
PyTorch part where torch is not installed. --dry-run: the same parts on whatever machine this is,
with tiny shapes (64 px, narrowed networks, batch 2, 2 timed calls, one row per mode and dtype)
and the tests only collected: ~2.5 min of CPU, mostly XLA:CPU compiling the networks' inits and
train steps; tests/test_device_script.py runs its light parts (no network compiled) in every test
run and all of it under -m slow. Its numbers measure nothing. Ratio = peer ms / ours ms (> 1: ours
faster).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# The test files that hold tests marked `gpu` (tests/test_device_script.py checks this list).
GPU_TEST_FILES = (
    "tests/test_nn_platform.py",
    "tests/test_depthwise.py",
    "tests/test_mixed_precision.py",
    "tests/test_models.py",
    "tests/test_flows.py",
)

# The paper's reported inference time per 512-px patch (the X-ray paper, docs/papers.md).
PAPER_MS_PER_512_PATCH = 82.4

# name -> (runner, budget s, minimum s to start it); the order is the running order.
PARTS = {
    "env": ("jax", 40, 10),
    "kernels": ("jax", 45, 15),
    "pytest": ("pytest", 120, 30),
    "paper": ("jax", 170, 40),
    "paper_peer": ("torch", 60, 15),
    "draem": ("jax", 70, 30),
    "draem_peer": ("torch", 40, 15),
    "baseline": ("jax", 60, 25),
    "baseline_peer": ("torch", 30, 15),
    "patchcore": ("jax", 50, 25),
}
SCRIPTS = {"jax": os.path.join(HERE, "jax_parts.py"), "torch": os.path.join(HERE, "torch_parts.py")}
SUMMARY_S = 5  # kept back for the summary
DRY_RUN_BUDGET_FACTOR = 4  # each part's budget in a dry run; --budget-s defaults to 1800 s there


def make_plan(dry_run: bool) -> dict:
    """Shapes, batches and repeats of every part: the GPU's, or tiny ones for a dry run."""
    if dry_run:
        # One row per mode and dtype where a part has them (a compile each, the CPU's dearest step).
        small = {"model.width_multiplier": 0.125, "model.nested_unet_levels": 2, "model.unet_levels": 1}
        return {
            "warmup": 1,
            "repeats": 2,
            "min_row_s": 1.0,
            "paper": {"model": "paper", "channels": 1, "size": 64, "shrink": small,
                      "rows": [["train", "float32", 2], ["infer", "bfloat16", 2]]},
            "draem": {"model": "draem", "channels": 3, "size": 64, "shrink": {"model.width_multiplier": 0.0625},
                      "rows": [["infer", "float32", 2]]},
            "baseline": {"name": "stfpm", "backbone": "resnet18", "size": 32, "rows": [["train", 2], ["infer", 2]]},
            "patchcore": {"config": "patchcore_cpu", "size": 32, "batch": 2, "batches": 3,
                          "shrink": {"model.bank_size": 16, "model.chunk_size": 32, "model.bank_block": 16}},
        }  # fmt: skip
    return {
        "warmup": 3,
        "repeats": 10,
        "min_row_s": 8.0,
        # Batch 8 is the paper's (DRAEM's) training batch; inference at batch 1 is the paper's
        # seconds per patch, at 8 the throughput.
        "paper": {"model": "paper", "channels": 1, "size": 512,
                  "rows": [["train", "float32", 8], ["infer", "float32", 1], ["train", "bfloat16", 8],
                           ["infer", "bfloat16", 1], ["infer", "float32", 8], ["infer", "bfloat16", 8]]},
        "draem": {"model": "draem", "channels": 3, "size": 256,
                  "rows": [["train", "float32", 8], ["infer", "float32", 8]]},
        "baseline": {"name": "stfpm", "backbone": "resnet18", "size": 256, "rows": [["train", 8], ["infer", 8]]},
        # 7 batches of 32 tiles x 1,024 patches stay under the 262,144-patch buffer: the rate of the
        # embedding and buffering alone. The first coreset reduction (131,072 of 393,216 patches,
        # greedy k-centre) would not fit this budget; the dry run's tiny buffer does include it.
        "patchcore": {"config": "patchcore", "size": 256, "batch": 32, "batches": 7},
    }  # fmt: skip


class Runner:
    """Runs the parts in order within the budget and keeps their records."""

    def __init__(self, args, plan: dict, scratch: str):
        self.args, self.plan, self.scratch = args, plan, scratch
        self.start = time.time()
        self.parts: dict[str, dict] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.start) - SUMMARY_S

    def run(self, name: str) -> None:
        kind, budget, minimum = PARTS[name]
        if self.args.dry_run:  # a CPU compiles slower than the GPU machine's host does
            budget *= DRY_RUN_BUDGET_FACTOR
        left = self.left()
        if name not in self.args.parts:
            self.parts[name] = {"status": "skipped", "reason": "not in --parts"}
        elif kind == "torch" and importlib.util.find_spec("torch") is None:
            self.parts[name] = {"status": "skipped", "reason": "torch is not installed here: no PyTorch peer row"}
        elif left < minimum:
            self.parts[name] = {
                "status": "skipped",
                "reason": f"{max(left, 0):.0f} s of the budget left, part needs {minimum}",
            }
        else:
            self.parts[name] = self._run_part(name, kind, min(budget, left))
        record = self.parts[name]
        print(f"== {name}: {record['status']}" + (f" ({record['reason']})" if "reason" in record else ""), flush=True)

    def _run_part(self, name: str, kind: str, budget: float) -> dict:
        t0 = time.time()
        if kind == "pytest":
            record = run_pytest(self.args, budget)
        else:
            part_out = os.path.join(self.scratch, f"{name}.json")
            plan = {**self.plan, "deadline": t0 + budget - 3}
            cmd = [sys.executable, SCRIPTS[kind], name, "--plan", json.dumps(plan), "--out", part_out]
            rc, tail = run_child(cmd, budget)
            record = {"rc": rc}
            if os.path.exists(part_out):
                with open(part_out) as f:
                    record.update(json.load(f))
            if rc == 0 and record.get("done"):
                record["status"] = "ok"
            else:
                record["status"] = "timeout" if rc == "timeout" else "failed"
                record["reason"] = f"exit {rc}" if rc != "timeout" else f"killed at its budget of {budget:.0f} s"
                record["output_tail"] = tail
        record["seconds"] = round(time.time() - t0, 1)
        return record


def run_child(cmd: list[str], timeout: float) -> tuple[int | str, str]:
    """(exit code or 'timeout', the last lines of its output); its output is echoed as it comes."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    deadline = time.time() + timeout
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.time() < deadline:
            if sel.select(timeout=max(0.0, min(1.0, deadline - time.time()))):
                line = proc.stdout.readline()
                if not line:
                    break
                print("   " + line.rstrip(), flush=True)
                lines.append(line.rstrip())
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", "\n".join(lines[-30:])
        return proc.wait(timeout=max(1.0, deadline - time.time())), "\n".join(lines[-30:])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout", "\n".join(lines[-30:])


def run_pytest(args, budget: float) -> dict:
    """The gpu-marked tests (only collected in a dry run), the log in OUT/pytest.log."""
    log = os.path.join(args.out, "pytest.log")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", *GPU_TEST_FILES]
    if args.dry_run:
        cmd.append("--collect-only")
    env = {
        **os.environ,
        "XRAY_FLAX_TEST_JAX_CACHE": os.path.join(tempfile.gettempdir(), "xray_flax_gpu_jax_cache"),
        # The tests hold float32 to CPU tolerances (e.g. a kernel's two forms agree to 1e-5); a GPU's
        # default float32 convolutions and matmuls run in TF32 (10-bit mantissa), which fails them by
        # design. The benchmark rows keep the default, as users get it.
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
    }
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget, env=env)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        output, rc = output + f"\n(killed at its budget of {budget:.0f} s)\n", "timeout"
    with open(log, "w") as f:
        f.write(f"$ {' '.join(cmd)}\n{output}")
    counts = {
        word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", output)
    }
    collected = re.search(r"(\d+) tests? collected", output)
    if collected:
        counts["collected"] = int(collected.group(1))
    ok = rc == 0 and (counts.get("passed", 0) > 0 or counts.get("collected", 0) > 0)
    record = {"status": "ok" if ok else ("timeout" if rc == "timeout" else "failed"), "rc": rc, "counts": counts}
    record["result"] = {"command": " ".join(cmd[1:]), "log": "pytest.log", "counts": counts,
                        "JAX_DEFAULT_MATMUL_PRECISION": env["JAX_DEFAULT_MATMUL_PRECISION"],
                        "wall_s": round(time.time() - t0, 1), "collect_only": args.dry_run}  # fmt: skip
    if not ok:
        record["reason"] = f"pytest exit {rc}; see pytest.log"
        record["output_tail"] = "\n".join(output.splitlines()[-30:])
    return record


# --- the table -----------------------------------------------------------------------------------

PAIRS = {"paper": "paper_peer", "draem": "draem_peer", "baseline": "baseline_peer"}


def table_rows(parts: dict) -> list[dict]:
    """Every timed row, ours with the peer's same row (model, mode, dtype, size, batch) and the ratio."""
    rows = []
    for ours_name, peer_name in PAIRS.items():
        peer_rows = {_key(r): r for r in parts.get(peer_name, {}).get("rows", [])}
        for row in parts.get(ours_name, {}).get("rows", []):
            peer = peer_rows.get(_key(row))
            rows.append(
                {
                    "part": ours_name,
                    **{k: row[k] for k in ("model", "mode", "dtype", "size", "batch", "device")},
                    "median_ms": round(row["median_ms"], 3),
                    "ms_per_image": round(row["ms_per_image"], 3),
                    "compile_s": row.get("compile_s"),
                    "peer_median_ms": round(peer["median_ms"], 3) if peer else None,
                    "peer_device": peer["device"] if peer else None,
                    "ratio_vs_peer": round(peer["median_ms"] / row["median_ms"], 3) if peer else None,
                    "peer_missing_reason": None if peer else _peer_missing(parts.get(peer_name)),
                }
            )
    return rows


def _key(row: dict) -> tuple:
    return (row["mode"], row["dtype"], row["size"], row["batch"])


def _peer_missing(record: dict | None) -> str:
    if not record:
        return "peer part not run"
    return record.get("reason") or "peer row skipped (part budget)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for summary.json and pytest.log")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for all parts (480; a dry run 1800)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on this machine, tests only collected")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of parts to run (default: all)")
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.dry_run else 480.0
    os.makedirs(args.out, exist_ok=True)
    plan = make_plan(args.dry_run)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="run_gpu_") as scratch:
        runner = Runner(args, plan, scratch)
        for name in PARTS:
            runner.run(name)
    summary = {
        "script": "benchmarks/device/run_gpu.py",
        "argv": sys.argv if argv is None else argv,
        "dry_run": args.dry_run,
        "started_utc": started,
        "wall_s": round(time.time() - runner.start, 1),
        "budget_s": args.budget_s,
        "plan": plan,
        "paper_ms_per_512_patch": PAPER_MS_PER_512_PATCH,
        "table": table_rows(runner.parts),
        "parts": runner.parts,
    }
    path = os.path.join(args.out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    print_table(summary)
    print(f"wrote {path} ({summary['wall_s']} s)", flush=True)
    return summary


def print_table(summary: dict) -> None:
    print("\n| part | status | seconds | note |\n|---|---|---|---|")
    for name, rec in summary["parts"].items():
        print(f"| {name} | {rec['status']} | {rec.get('seconds', '-')} | {rec.get('reason', '')} |")
    print("\n| model | mode | dtype | size | batch | device | ours ms | ms/image | peer ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary["table"]:
        print(
            f"| {r['model']} | {r['mode']} | {r['dtype']} | {r['size']} | {r['batch']} | {r['device']} | "
            f"{r['median_ms']:.2f} | {r['ms_per_image']:.2f} | {r['peer_median_ms'] or '-'} | "
            f"{r['ratio_vs_peer'] or '-'} |"
        )
    pc = summary["parts"].get("patchcore", {}).get("result", {})
    if pc.get("tiles_per_s"):
        print(
            f"\nPatchCore fit: {pc['tiles_per_s']:.1f} tiles/s ({pc['backbone']}, {pc['size']} px, batch {pc['batch']})"
        )
    print(f"The paper: {PAPER_MS_PER_512_PATCH} ms per 512-px patch.", flush=True)


if __name__ == "__main__":
    main()
