"""Our ResNet-18 / Wide-ResNet-50-2 taps against torchvision's, from the same state dict file.

    /tmp/peer/bin/python benchmarks/peer/compare_resnet_taps.py [--out benchmarks/results/peer_resnet_taps.json]

Torch side (this interpreter, the peer venv): torchvision ``resnet18`` and ``wide_resnet50_2``
with random initialisation (``weights=None``; no weights can be downloaded here) whose BN
weights, biases and running statistics are then randomised to non-trivial values, in eval
mode; the state dict is saved as safetensors, a random image batch in [0, 1] as .npy, and
the taps (stem = relu(bn1(conv1)), pool = maxpool, layer1..layer4) are computed after
torchvision's ImageNet normalisation.
Our side (``--ours``, run as a subprocess with the project venv, which has jax and no torch):
``xray_flax.backbones.resnet.build(...).load()`` reads the safetensors file and
``features`` gives the taps (NHWC), which come back as .npy files.

Also checked: timm's resnet18 / wide_resnet50_2 have exactly torchvision's key names and
shapes (so timm files load too), and grey='fold' against timm's ``adapt_input_conv(1, w)``
applied to the torch model (grey input normalised with the mean of the ImageNet statistics).
Target: every tap within 1e-4 (max abs diff relative to the tap's max |value|).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
TAPS = ("stem", "pool", "layer1", "layer2", "layer3", "layer4")
# name -> (input batch shape NCHW, taps compared); WRN at 128 px to keep its CPU time short.
CASES = {
    "resnet18": ((2, 3, 224, 224), TAPS),
    "wide_resnet50_2": ((1, 3, 128, 128), TAPS),
}
TARGET = 1e-4


# ---------------------------------------------------------------- our side (project venv, no torch)


def ours(args) -> None:
    import jax

    from xray_flax.backbones import resnet

    images = np.load(args.images)  # NHWC in [0, 1]
    backbone = resnet.build(args.name, tuple(args.taps), images.shape[-1], args.grey, args.weights)
    t0 = time.perf_counter()
    variables = backbone.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = jax.jit(backbone.features)(variables, images)
    feats = jax.tree.map(np.asarray, feats)
    run_s = time.perf_counter() - t0
    for tap, value in feats.items():
        np.save(os.path.join(args.outdir, f"{tap}.npy"), value)
    with open(os.path.join(args.outdir, "timing.json"), "w") as f:
        json.dump({"load_s": load_s, "compile_and_run_s": run_s, "jax": jax.__version__}, f)


# ---------------------------------------------------------------- torch side (peer venv)


def randomise_bn(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(100)


def torch_taps(model, x, mean, std):
    import torch

    with torch.no_grad():
        mean = torch.tensor(mean).view(1, -1, 1, 1)
        std = torch.tensor(std).view(1, -1, 1, 1)
        h = (x - mean) / std
        out = {}
        h = out["stem"] = model.relu(model.bn1(model.conv1(h)))
        h = out["pool"] = model.maxpool(h)
        for i in range(1, 5):
            h = out[f"layer{i}"] = getattr(model, f"layer{i}")(h)
    return {k: v.permute(0, 2, 3, 1).numpy() for k, v in out.items()}  # NHWC like ours


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_ours(name, taps, grey, weights, images, workdir):
    outdir = tempfile.mkdtemp(dir=workdir)
    path = os.path.join(outdir, "images.npy")
    np.save(path, images)
    cmd = [OURS_PYTHON, os.path.abspath(__file__), "--ours", "--name", name, "--grey", grey, "--weights", weights]
    cmd += ["--images", path, "--outdir", outdir, "--taps", *taps]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    feats = {t: np.load(os.path.join(outdir, f"{t}.npy")) for t in taps}
    with open(os.path.join(outdir, "timing.json")) as f:
        return feats, json.load(f)


def diffs(theirs, mine):
    out = {}
    for tap, ref in theirs.items():
        got = mine[tap]
        assert got.shape == ref.shape, (tap, got.shape, ref.shape)
        abs_diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        scale = float(np.abs(ref).max())
        out[tap] = {
            "shape_nhwc": list(ref.shape),
            "max_abs_diff": float(abs_diff.max()),
            "max_abs_ref": scale,
            "max_rel_diff": float(abs_diff.max() / max(scale, 1e-12)),  # relative to the tap's range
            "max_elementwise_rel_diff_where_abs_ref_gt_1e-2": float(
                (abs_diff / np.maximum(np.abs(ref), 1e-2))[np.abs(ref) > 1e-2].max()
            ),
        }
    return out


def peer(args) -> None:
    import safetensors.torch
    import timm
    import torch
    import torchvision
    from timm.models._manipulate import adapt_input_conv

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    results = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "target_max_rel_diff": TARGET,
        "diff_definitions": "max_abs_diff = max |ours - torch| over the tap; max_rel_diff = max_abs_diff / max |torch|",
        "cases": {},
    }
    ok = True
    with tempfile.TemporaryDirectory() as workdir:
        for name, (shape, taps) in CASES.items():
            model = getattr(torchvision.models, name)(weights=None).eval()
            randomise_bn(model, seed=1)
            state = model.state_dict()
            timm_state = timm.create_model(name, pretrained=False).state_dict()
            same_keys = set(state) == set(timm_state) and all(state[k].shape == timm_state[k].shape for k in state)
            weights = os.path.join(workdir, f"{name}.safetensors")
            safetensors.torch.save_file(state, weights)
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
            t0 = time.perf_counter()
            theirs = torch_taps(model, x, imagenet_mean, imagenet_std)
            torch_s = time.perf_counter() - t0
            mine, timing = run_ours(name, taps, "replicate", weights, x.permute(0, 2, 3, 1).numpy(), workdir)
            case = {
                "input_nchw": list(shape),
                "params": sum(p.numel() for p in model.parameters()),
                "timm_same_keys_and_shapes": bool(same_keys),
                "torch_forward_s": torch_s,
                "ours": timing,
                "taps": diffs(theirs, mine),
            }
            ok &= same_keys and all(d["max_rel_diff"] <= TARGET for d in case["taps"].values())
            results["cases"][name] = case
            print(name, json.dumps({t: [d["max_abs_diff"], d["max_rel_diff"]] for t, d in case["taps"].items()}))

            if name == "resnet18":
                # grey='fold': timm's adapt_input_conv on conv1, grey normalised with the mean statistics.
                folded = getattr(torchvision.models, name)(weights=None).eval()
                folded.load_state_dict(state)
                with torch.no_grad():
                    w = adapt_input_conv(1, state["conv1.weight"].clone())
                    folded.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
                    folded.conv1.weight.copy_(w)
                grey = x[:, :1]
                m, s = (sum(imagenet_mean) / 3,), (sum(imagenet_std) / 3,)
                fold_taps = ("stem", "layer1", "layer2")
                theirs = {t: v for t, v in torch_taps(folded, grey, m, s).items() if t in fold_taps}
                mine, timing = run_ours(name, fold_taps, "fold", weights, grey.permute(0, 2, 3, 1).numpy(), workdir)
                fold = {"input_nchw": list(grey.shape), "ours": timing, "taps": diffs(theirs, mine)}
                ok &= all(d["max_rel_diff"] <= TARGET for d in fold["taps"].values())
                results["cases"][f"{name}_grey_fold_vs_timm_adapt_input_conv"] = fold
                print("fold", json.dumps({t: [d["max_abs_diff"], d["max_rel_diff"]] for t, d in fold["taps"].items()}))
    results["all_within_target"] = bool(ok)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(("OK" if ok else "NOT within target"), "->", args.out)
    if not ok:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "peer_resnet_taps.json"))
    p.add_argument("--ours", action="store_true", help="internal: run our side (project venv)")
    p.add_argument("--name")
    p.add_argument("--grey", default="replicate")
    p.add_argument("--weights")
    p.add_argument("--images")
    p.add_argument("--outdir")
    p.add_argument("--taps", nargs="+")
    args = p.parse_args()
    ours(args) if args.ours else peer(args)


if __name__ == "__main__":
    main()
