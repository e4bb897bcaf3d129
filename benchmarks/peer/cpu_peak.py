#!/usr/bin/env python
"""Machine fp32 compute ceiling: square matmul GFLOP/s (2*n^3 / median time).

Measures every framework importable in THIS interpreter among torch, numpy, jax
(--frameworks limits it).  With --jax-python PATH it also re-runs itself under
that interpreter for jax (e.g. the project virtual environment's python) and merges the result.
Thread count is pinned to --threads for torch (set_num_threads), numpy's BLAS
(OPENBLAS/MKL/OMP env vars set before import) and XLA (intra-op threads flag).
Also (torch only, --conv) times a few fp32 3x3 conv2d forwards of the shapes
that dominate the DRAEM models, as a "conv ceiling" reference.

Usage:
  /tmp/peer/bin/python benchmarks/peer/cpu_peak.py --jax-python .venv/bin/python \
      --out benchmarks/results/cpu_peak.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def pre_env(threads: int) -> None:
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        os.environ.setdefault(k, str(threads))
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (
            flags + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
        ).strip()


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402  (only its stdlib parts are used here)

_LAST_INFO: dict = {}


def bench(fn, warmup: int, repeats: int) -> list[float]:
    """Warm-up + timed calls; calls disturbed by other processes are redone (bench_common.time_fn)."""
    _LAST_INFO.clear()
    return bc.time_fn(fn, warmup, repeats, _LAST_INFO)


def row(fw: str, n: int, ts: list[float], flop: float, extra: dict | None = None) -> dict:
    med = statistics.median(ts)
    r = {
        "framework": fw,
        "n": n,
        "median_s": med,
        "gflop_per_s": flop / med / 1e9,
        "best_gflop_per_s": flop / min(ts) / 1e9,
        "all_s": ts,
    }
    if extra:
        r.update(extra)
    r.update(_LAST_INFO)
    print(
        f"{fw:<14} n={n:<5} median {med * 1e3:9.2f} ms  -> {r['gflop_per_s']:8.1f} GFLOP/s "
        f"(best {r['best_gflop_per_s']:.1f})"
        f"  max foreign cpu {r.get('max_foreign_cpu_frac', 0) or 0:.3f}",
        flush=True,
    )
    return r


# Over the complexity limit: one optional measurement per framework (numpy, torch, jax, convs);
# no test covers it (it needs the torch venv), so it is left whole rather than refactored blind.
def main() -> None:  # noqa: C901
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="2048,4096")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frameworks", default="torch,numpy,jax")
    p.add_argument("--jax-python", default=None, help="other interpreter to run the jax measurement in")
    p.add_argument("--no-conv", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--max-foreign", type=float, default=0.05)
    p.add_argument("--wait-idle", type=float, default=900.0)
    args = p.parse_args()
    bc.Clean.max_foreign, bc.Clean.wait_timeout_s = args.max_foreign, args.wait_idle
    pre_env(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    fws = args.frameworks.split(",")
    rows: list[dict] = []
    versions: dict = {"python": sys.version.split()[0], "executable": sys.executable}

    if "torch" in fws:
        try:
            import torch

            torch.set_num_threads(args.threads)
            versions["torch"] = torch.__version__
            for n in sizes:
                a, b = torch.randn(n, n), torch.randn(n, n)
                c = torch.empty(n, n)
                rows.append(
                    row(
                        "torch",
                        n,
                        bench(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c), args.warmup, args.repeats),
                        2 * n**3,
                    )
                )
            if not args.no_conv:
                F = torch.nn.functional
                # (batch, cin, cout, hw): typical DRAEM-layer shapes
                for bsz, cin, cout, hw in [(1, 128, 128, 256), (1, 256, 256, 128), (1, 512, 512, 32), (4, 64, 64, 256)]:
                    x = torch.randn(bsz, cin, hw, hw)
                    w = torch.randn(cout, cin, 3, 3)
                    flop = 2 * bsz * cin * cout * 9 * hw * hw

                    def conv(x=x, w=w):
                        with torch.inference_mode():
                            F.conv2d(x, w, padding=1)

                    rows.append(
                        row(
                            "torch-conv3x3",
                            hw,
                            bench(conv, args.warmup, args.repeats),
                            flop,
                            {"shape": f"b{bsz} {cin}->{cout} {hw}x{hw}"},
                        )
                    )
        except ImportError:
            pass

    if "numpy" in fws:
        try:
            import numpy as np

            versions["numpy"] = np.__version__
            try:
                cfg = np.show_config(mode="dicts")
                versions["numpy_blas"] = cfg.get("Build Dependencies", {}).get("blas", {}).get("name")
            except Exception:
                pass
            rng = np.random.default_rng(0)
            for n in sizes:
                a = rng.standard_normal((n, n), dtype=np.float32)
                b = rng.standard_normal((n, n), dtype=np.float32)
                c = np.empty((n, n), dtype=np.float32)
                rows.append(
                    row(
                        "numpy",
                        n,
                        bench(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), args.warmup, args.repeats),
                        2 * n**3,
                    )
                )
        except ImportError:
            pass

    if "jax" in fws:
        try:
            import jax
            import jax.numpy as jnp

            versions["jax"] = jax.__version__
            versions["jax_devices"] = [str(d) for d in jax.devices()]
            f = jax.jit(jnp.dot)
            for n in sizes:
                ka, kb = jax.random.split(jax.random.PRNGKey(0))
                a = jax.random.normal(ka, (n, n), jnp.float32)
                b = jax.random.normal(kb, (n, n), jnp.float32)
                rows.append(
                    row(
                        "jax",
                        n,
                        bench(lambda a=a, b=b: f(a, b).block_until_ready(), args.warmup, args.repeats),
                        2 * n**3,
                    )
                )
        except ImportError:
            pass

    if args.jax_python and not any(r["framework"] == "jax" for r in rows):
        _jax_tmp = os.path.join(tempfile.mkdtemp(), "cpu_peak_jax.json")
        cmd = [
            args.jax_python,
            os.path.abspath(__file__),
            "--frameworks",
            "jax",
            "--threads",
            str(args.threads),
            "--sizes",
            args.sizes,
            "--warmup",
            str(args.warmup),
            "--repeats",
            str(args.repeats),
            "--max-foreign",
            str(args.max_foreign),
            "--wait-idle",
            str(args.wait_idle),
            "--out",
            _jax_tmp,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        if r.returncode == 0:
            sub = json.load(open(_jax_tmp))
            rows += sub["results"]
            versions["jax_side"] = sub["versions"]
        else:
            print("jax run failed:", r.stderr[-2000:])

    mm = [r for r in rows if r["framework"] in ("torch", "numpy", "jax")]
    ceiling = max((r["gflop_per_s"] for r in mm), default=None)
    print(f"matmul ceiling (max median over frameworks/sizes): {ceiling and round(ceiling, 1)} GFLOP/s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        import datetime as dt

        with open(args.out, "w") as fh:
            json.dump(
                {
                    "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    "threads": args.threads,
                    "versions": versions,
                    "matmul_ceiling_gflop_per_s": ceiling,
                    "results": rows,
                },
                fh,
                indent=1,
            )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
