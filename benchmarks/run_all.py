"""The whole benchmark suite, our side and (when its venv exists) the PyTorch peers', in one sitting.

    .venv/bin/python benchmarks/run_all.py --out benchmarks/results/
        [--peers-dir benchmarks/peer] [--peer-python /tmp/peer/bin/python]
        [--draem] [--peer-draem] [--reuse-peer DIR] [--quick] [--skip-extras] [--repeats 5]

Steps (each in its own process, so one's memory never weighs on the next):
  1. the fp32 matmul ceiling (peers' cpu_peak.py: numpy, torch when the peer venv is there, jax);
  2. our paper model fp32 and bf16 (bench_model.py), DRAEM fp32 with --draem;
  3. the PyTorch peers (unetpp_torch_bench.py; draem_torch_bench.py with --peer-draem, ~12 min);
     --reuse-peer DIR takes peer JSONs from an earlier run instead (the table says so);
  4. anomaly synthesis (bench_synthesis.py) and the input pipeline (bench_pipeline.py);
  5. the peers' summarize.py table of both sides, then a ratio table
     (peer s/image / ours s/image: > 1 means we are faster), also at each side's best batch.
On a GPU the model benches run unchanged on the GPU; the CPU ceiling and the CPU peers are
then a different machine's story and are skipped unless --peers-on-gpu-host is given.
Build the peer venv with `bash benchmarks/peer/setup_peer_venv.sh /tmp/peer` (~2 min).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd: list[str], log: str) -> int:
    print(f"$ {' '.join(cmd)}  > {log}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    print(f"  rc={rc} in {time.perf_counter() - t0:.0f} s", flush=True)
    if rc:
        with open(log) as f:
            print("".join(f.readlines()[-15:]))
    return rc


def best_per(rows: list[dict], mode: str, size: int) -> dict | None:
    candidates = [r for r in rows if r["mode"] == mode and r["size"] == size]
    return min(candidates, key=lambda r: r["median_s_per_image"]) if candidates else None


def ratio_table(pairs: list[tuple[str, str]], ceiling: float | None) -> str:
    """Markdown: for each (ours, peer) JSON pair, matching rows and each side's best batch."""
    lines = [
        "| ours | peer | mode | size | batch (ours/peer) | ours s/img | peer s/img | speed-up vs peer "
        "| ours GFLOP/s | ours % of ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ours_path, peer_path in pairs:
        ours, peer = json.load(open(ours_path)), json.load(open(peer_path))
        keys = sorted({(r["mode"], r["size"]) for r in ours["results"]}, key=lambda k: (k[0] != "train", k[1]))
        for mode, size in keys:
            a, b = best_per(ours["results"], mode, size), best_per(peer["results"], mode, size)
            if b is None:
                continue
            ach = a.get("achieved_gflop_per_s")
            frac = f"{100 * ach / ceiling:.0f}%" if ach and ceiling else "-"
            lines.append(
                f"| {ours['model']} | {peer['model'].split(':')[0]} | {mode} | {size} | "
                f"{a['batch']}/{b['batch']} | {a['median_s_per_image']:.3f} | {b['median_s_per_image']:.3f} | "
                f"**{b['median_s_per_image'] / a['median_s_per_image']:.2f}x** | "
                f"{(f'{ach:.1f}' if ach else '-')} | {frac} |"
            )
    return "\n".join(lines)


# Over the complexity limit: one straight sitting of five optional steps, each an if on its flags;
# no test runs it, so it is left whole rather than refactored blind.
def main() -> None:  # noqa: C901
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--peers-dir", default=os.path.join(HERE, "peer"))
    p.add_argument("--peer-python", default="/tmp/peer/bin/python")
    p.add_argument("--draem", action="store_true", help="also benchmark our DRAEM config (fp32)")
    p.add_argument("--peer-draem", action="store_true", help="also run anomalib's DRAEM peer (~12 min)")
    p.add_argument("--reuse-peer", default="", help="directory with peer JSONs from an earlier run")
    p.add_argument("--quick", action="store_true", help="256 px only, 3 repeats (a smoke run, not a record)")
    p.add_argument("--skip-extras", action="store_true", help="skip synthesis and pipeline benches")
    p.add_argument("--skip-ours", action="store_true", help="only redo the peer side + tables")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", default="1", help="our train/infer batches (comma list)")
    p.add_argument(
        "--peer-batches",
        default="1",
        help="peer train/infer batches; batch 1 is the peers' best here (benchmarks/peer/RESULTS.md)",
    )
    p.add_argument("--wait-idle", type=float, default=900.0)
    p.add_argument("--peers-on-gpu-host", action="store_true")
    args = p.parse_args()

    on_cpu = jax.default_backend() == "cpu"
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    py = sys.executable
    have_peer = (
        os.path.exists(args.peer_python) and os.path.isdir(args.peers_dir) and (on_cpu or args.peers_on_gpu_host)
    )
    repeats = "3" if args.quick else str(args.repeats)
    sizes = "256" if args.quick else "256,512"
    guard = ["--wait-idle", str(args.wait_idle)]

    # 1. Ceiling, measured in this sitting (the VM's clock varies ~20% between runs).
    peak = out("cpu_peak.json")
    if on_cpu and os.path.isdir(args.peers_dir):
        script = os.path.join(args.peers_dir, "cpu_peak.py")
        if have_peer:
            run([args.peer_python, script, "--jax-python", py, "--out", peak, *guard], out("cpu_peak.log"))
        else:
            run([py, script, "--frameworks", "numpy,jax", "--no-conv", "--out", peak, *guard], out("cpu_peak.log"))

    # 2. Our models.
    ours = []
    model_runs = [("paper", "float32", "paper_jax_fp32.json"), ("paper", "bfloat16", "paper_jax_bf16.json")]
    if args.draem:
        model_runs.append(("draem", "float32", "draem_jax_fp32.json"))
    for config, dtype, name in model_runs:
        if not args.skip_ours:
            infer_sizes = sizes if config == "paper" else "256"
            run(
                [
                    py,
                    os.path.join(HERE, "bench_model.py"),
                    "--config",
                    config,
                    "--compute-dtype",
                    dtype,
                    "--infer-sizes",
                    infer_sizes,
                    "--train-batches",
                    args.batches,
                    "--infer-batches",
                    args.batches,
                    "--repeats",
                    repeats,
                    *guard,
                    "--out",
                    out(name),
                ],
                out(name.replace(".json", ".log")),
            )
        if os.path.exists(out(name)):
            ours.append((config, out(name)))

    # 3. Peers.
    peer_files = {}
    if args.reuse_peer:
        for config, pattern in (("paper", "unetpp_torch*.json"), ("draem", "draem_torch*.json")):
            found = sorted(glob.glob(os.path.join(args.reuse_peer, pattern)))
            if found:
                shutil.copy(found[-1], out(f"reused_{os.path.basename(found[-1])}"))
                peer_files[config] = out(f"reused_{os.path.basename(found[-1])}")
    elif have_peer:
        peer_runs = [("paper", "unetpp_torch_bench.py", "unetpp_torch.json")]
        if args.peer_draem:
            peer_runs.append(("draem", "draem_torch_bench.py", "draem_torch.json"))
        for config, script, name in peer_runs:
            cmd = [
                args.peer_python,
                os.path.join(args.peers_dir, script),
                "--repeats",
                repeats,
                "--train-batches",
                args.peer_batches,
                "--infer-batches",
                args.peer_batches,
                "--infer-sizes",
                sizes if config == "paper" else "256",
                "--wait-idle",
                str(args.wait_idle),
                "--out",
                out(name),
            ]
            if run(cmd, out(name.replace(".json", ".log"))) == 0:
                peer_files[config] = out(name)
    else:
        print("no PyTorch peer venv: peer side skipped (build it with setup_peer_venv.sh)")

    # 4. Synthesis and input pipeline.
    if not args.skip_extras:
        run(
            [
                py,
                os.path.join(HERE, "bench_synthesis.py"),
                "--sizes",
                "256",
                "512",
                "--batch",
                "8",
                "--modes",
                "vmap",
                "--json",
                out("synthesis.json"),
            ],
            out("synthesis.log"),
        )
        pipe_dir = "/tmp/xray_bench_pipeline"
        if (
            run(
                [
                    py,
                    os.path.join(HERE, "bench_pipeline.py"),
                    "--size",
                    "4096",
                    "--seconds",
                    "10",
                    "--workdir",
                    pipe_dir,
                ],
                out("pipeline.log"),
            )
            == 0
        ):
            shutil.copy(os.path.join(pipe_dir, "bench_pipeline.json"), out("pipeline.json"))

    # 5. Tables.
    files = [f for _, f in ours] + list(peer_files.values())
    ceiling = None
    if os.path.exists(peak):
        ceiling = json.load(open(peak))["matmul_ceiling_gflop_per_s"]
        subprocess.call([py, os.path.join(args.peers_dir, "summarize.py"), "--peak", peak, *files])
    pairs = [(f, peer_files[c]) for c, f in ours if c in peer_files]
    table = ratio_table(pairs, ceiling)
    print("\n" + table)
    with open(out("ratios.md"), "w") as f:
        f.write(f"ceiling {ceiling} GFLOP/s\n\n{table}\n")


if __name__ == "__main__":
    main()
