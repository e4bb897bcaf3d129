#!/usr/bin/env python
"""Peer benchmark: anomalib 2.7's PaDiM and PatchCore fits (PyTorch, CPU) at a given number of tiles.

The anomalib side of benchmarks/bench_memory_bank.py: what anomalib's lightning
modules do in a fit, on the torch models alone:
  * every training batch goes through the torch model in train mode, which appends its
    embeddings to the model's memory bank (PadimModel.memory_bank, PatchcoreModel.embedding_store);
  * then PaDiM's `model.fit()` (vstack of all embeddings, MultiVariateGaussian: per-position mean,
    covariance, inverse) or PatchCore's `model.subsample_embedding(ratio)` (vstack, k-centre
    greedy coreset over all patches, anomalib's default ratio 0.1).

Backbones are anomalib's TimmFeatureExtractor with `pre_trained=False` (the hubs are unreachable;
weights do not change the cost). Inputs: uniform random images [B, 3, S, S], made batch by batch.
Each run is one subprocess with an address-space cap (`--memory-cap-gb`, RLIMIT_AS), so running
out of memory is an allocation error reported in the JSON line, not the kernel's OOM killer.

Usage (the peer venv of benchmarks/peer/setup_peer_venv.sh):
  /tmp/peer/bin/python benchmarks/peer/anomalib_memory_bank_bench.py --model padim --tiles 1000 \
      --size 256 --batch 32 [--backbone resnet18] [--memory-cap-gb 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import traceback
import warnings

warnings.filterwarnings("ignore")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    cap = int(args.memory_cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "padim":
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(
            backbone=args.backbone, layers=["layer1", "layer2", "layer3"], pre_trained=False, n_features=100
        )
    else:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=["layer2", "layer3"], backbone=args.backbone, pre_trained=False)
    model.train()
    result = {"side": "anomalib 2.7", "model": args.model, "backbone": args.backbone, "tiles": args.tiles}
    result.update(size=args.size, batch=args.batch, threads=args.threads, memory_cap_gb=args.memory_cap_gb)
    start = time.perf_counter()
    stage = "embedding"
    try:
        done = 0
        while done < args.tiles:
            n = min(args.batch, args.tiles - done)
            with torch.no_grad():
                model(torch.rand(n, 3, args.size, args.size))
            done += n
        result["embed_s"] = round(time.perf_counter() - start, 2)
        result["peak_rss_after_embedding_mb"] = round(_peak_mb(), 1)
        stage = "fit"
        t0 = time.perf_counter()
        with torch.no_grad():
            if args.model == "padim":
                model.fit()
            else:
                model.subsample_embedding(args.ratio)
                result["bank"] = int(model.memory_bank.shape[0])
        result["fit_s"] = round(time.perf_counter() - t0, 2)
        result["total_s"] = round(time.perf_counter() - start, 2)
        result["tiles_per_s"] = round(args.tiles / result["total_s"], 2)
        result["ok"] = True
    except (MemoryError, RuntimeError) as e:  # torch raises RuntimeError for failed allocations
        result["ok"] = False
        result["failed_in"] = stage
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        result["seconds_until_failure"] = round(time.perf_counter() - start, 2)
        traceback.print_exc(file=sys.stderr)
    result["peak_rss_mb"] = round(_peak_mb(), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("padim", "patchcore"), default="padim")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.1, help="PatchCore coreset sampling ratio [anomalib: 0.1]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-cap-gb", type=float, default=20.0)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--out", default="", help="append the JSON line to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    argv = sys.argv[1:]
    if "--out" in argv:  # the child prints; the parent appends
        i = argv.index("--out")
        argv = argv[:i] + argv[i + 2 :]
    argv = [a for a in argv if not a.startswith("--out=")]
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"ok": False, "exit": proc.returncode, "stderr": proc.stderr[-1500:]}
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
