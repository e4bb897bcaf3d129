"""Our Reverse Distillation OCBE + decoder against anomalib 2.7's, with the same weights.

    /tmp/peer/bin/python benchmarks/peer/compare_rd_heads.py [--out benchmarks/results/peer_rd_heads.json]

Torch side (this interpreter, the peer venv): anomalib's ReverseDistillationModel(backbone,
pre_trained=False, layers layer1-3) for wide_resnet50_2 and resnet18; the parameter counts of
its `bottleneck` (OCBE) and `decoder`, of the OCBE's conv4/bn4 (created, never called), and of
the parameters that get a gradient from the loss (checked with one backward pass). Then
the OCBE + decoder alone, with BN weights, biases and running statistics randomised to
non-trivial values, on random encoder-shaped inputs (32^2, 16^2, 8^2: the taps of a 128-px
tile, so train-mode BN on the 4^2 embedding still averages 32 values per channel), in eval
mode (running statistics, what the anomaly map uses) and in train mode (batch statistics, what
the train step uses), in float32 and, to tell rounding from real differences, in float64; the
state dict and the inputs are saved as .npz.
Our side (`--ours DIR`, run as a subprocess with the project venv, which has jax and no torch):
`ReverseDistillationHead` with the widths `build_head` derives for that backbone, the torch
weights converted (conv OIHW -> HWIO; ConvTranspose2d (in, out, a, b) -> (a, b, in, out)),
every one of our leaves filled exactly once, outputs back as .npz.
Target: every decoded tap within 1e-4 of torch float32 (max abs diff relative to the tap's
max |value|), and the parameter count equal to that of anomalib's parameters the loss reaches.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
LAYERS = ("layer1", "layer2", "layer3")
# backbone -> channels of layer1-3 (torchvision); inputs at the taps of a 128-px tile.
CASES = {"wide_resnet50_2": (256, 512, 1024), "resnet18": (64, 128, 256)}
SIZES = (32, 16, 8)
BATCH = 2
TARGET = 1e-4


# ---------------------------------------------------------------- our side (project venv, no torch)


def _flax_path(torch_key: str, batch_norms: set[str]) -> tuple[str, tuple[str, ...], str]:
    """torch state-dict key -> (collection, Flax module path, leaf); `batch_norms` = the torch
    module names of the BatchNorm2d layers (their 'weight' is Flax's 'scale')."""
    module, leaf = torch_key.rsplit(".", 1)
    parts = module.split(".")
    top = parts[0]
    if top == "bottleneck":
        rest = parts[1:]
        if rest[0] == "bn_layer":
            path = ("bottleneck", f"layer_{rest[1]}", _block_leaf(rest[2:]))
        else:
            # anomalib conv1/bn1, conv2/bn2 act on f1 (tap 0), conv3/bn3 on f2 (tap 1).
            names = {"conv1": "tap0_conv1", "bn1": "tap0_bn1", "conv2": "tap0_conv2", "bn2": "tap0_bn2",
                     "conv3": "tap1_conv1", "bn3": "tap1_bn1"}  # fmt: skip
            path = ("bottleneck", names[rest[0]])
    elif top == "decoder":
        stage = int(parts[1].removeprefix("layer")) - 1
        path = ("decoder", f"stage{stage}_{parts[2]}", _block_leaf(parts[3:]))
    else:
        raise KeyError(torch_key)
    flax_leaf, collection = {
        "weight": ("kernel", "params"),
        "bias": ("bias", "params"),
        "running_mean": ("mean", "batch_stats"),
        "running_var": ("var", "batch_stats"),
    }[leaf]
    if module in batch_norms and flax_leaf == "kernel":
        flax_leaf = "scale"
    return collection, path, flax_leaf


def _block_leaf(parts: list[str]) -> str:
    if parts[0] in ("downsample", "upsample"):
        return f"{parts[0]}_{'conv' if parts[1] == '0' else 'bn'}"
    return parts[0]


def _ours_case(name: str, folder: str, meta: dict) -> dict[str, np.ndarray]:
    import functools

    import jax
    import ml_collections

    from xray_flax.detectors.reverse_distillation import build_head
    from xray_flax.detectors.reverse_distillation import config as rd_config

    state = dict(np.load(os.path.join(folder, f"{name}_state.npz")))
    inputs = np.load(os.path.join(folder, f"{name}_inputs.npz"))
    feats = [inputs[f"f{i}"].transpose(0, 2, 3, 1) for i in range(len(LAYERS))]  # NCHW -> NHWC
    # Only what build_head reads of a backbone: anomalib's layer1-3 at strides 4, 8, 16.
    backbone = types.SimpleNamespace(
        name=name, taps=LAYERS, channels=dict(zip(LAYERS, CASES[name])), strides=dict(zip(LAYERS, (4, 8, 16)))
    )
    head = build_head(ml_collections.ConfigDict({"model": rd_config.defaults().model}), backbone)
    shapes = jax.eval_shape(functools.partial(head.init, jax.random.key(0), feats, train=False))
    flat_shapes = {jax.tree_util.keystr(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
    transposed = set(meta["transposed"][name])
    batch_norms = set(meta["batch_norms"][name])
    filled: dict[str, np.ndarray] = {}
    skipped = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.split(".")[1] in ("conv4", "bn4"):
            skipped.append(key)  # created by anomalib, never called
            continue
        collection, path, leaf = _flax_path(key, batch_norms)
        if value.ndim == 4:
            module = key.rsplit(".", 1)[0]
            value = value.transpose(2, 3, 0, 1) if module in transposed else value.transpose(2, 3, 1, 0)
        flat = jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in (collection, *path, leaf)))
        if flat not in flat_shapes:
            raise KeyError(f"{key} -> {flat}: no such leaf in our head")
        if flat in filled:
            raise KeyError(f"{flat} filled twice")
        if tuple(value.shape) != tuple(flat_shapes[flat]):
            raise ValueError(f"{key} {value.shape} -> {flat} {flat_shapes[flat]}")
        filled[flat] = value
    missing = sorted(set(flat_shapes) - set(filled))
    if missing:
        raise KeyError(f"{name}: our leaves not in the torch state dict: {missing[:10]}")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)]
    variables = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), [filled[p] for p in paths])
    eval_out = jax.jit(functools.partial(head.apply, train=False))(variables, feats)
    train_out, _ = jax.jit(functools.partial(head.apply, train=True, mutable=["batch_stats"]))(variables, feats)
    out = {}
    for mode, outs in (("eval", eval_out), ("train", train_out)):
        for i, o in enumerate(outs):
            out[f"{name}_{mode}_d{i}"] = np.asarray(o).transpose(0, 3, 1, 2)
    out[f"{name}_params"] = np.asarray(
        sum(int(np.prod(s)) for k, s in flat_shapes.items() if k.startswith("['params']"))
    )
    out[f"{name}_skipped"] = np.asarray(len(skipped))
    return out


def ours(folder: str) -> None:
    meta = json.load(open(os.path.join(folder, "meta.json")))
    out = {}
    for name in meta["cases"]:
        out.update(_ours_case(name, folder, meta))
    np.savez(os.path.join(folder, "ours.npz"), **out)


# ---------------------------------------------------------------- torch side (peer venv)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|."""
    return float(np.max(np.abs(a.astype(np.float64) - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def torch_side(args) -> dict:
    import torch
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    results = {"cases": {}}
    transposed, batch_norms = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, channels in CASES.items():
            model = ReverseDistillationModel(
                backbone=name, input_size=(64, 64), layers=list(LAYERS), anomaly_map_mode="add", pre_trained=False
            )
            bottleneck, decoder = model.bottleneck, model.decoder
            count = {
                "bottleneck": sum(p.numel() for p in bottleneck.parameters()),
                "decoder": sum(p.numel() for p in decoder.parameters()),
                "conv4_bn4_unused": sum(
                    p.numel() for n, p in bottleneck.named_parameters() if n.split(".")[0] in ("conv4", "bn4")
                ),
            }
            count["total"] = count["bottleneck"] + count["decoder"]
            # Which parameters the loss reaches: one backward pass through the whole model.
            model.train()
            images = torch.rand(2, 3, 64, 64)
            loss = ReverseDistillationLoss()(*model(images))
            loss.backward()
            count["with_gradient"] = sum(
                p.numel() for m in (bottleneck, decoder) for p in m.parameters() if p.grad is not None
            )
            # Random non-trivial BN affine parameters and running statistics.
            with torch.no_grad():
                for m in list(bottleneck.modules()) + list(decoder.modules()):
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.uniform_(-0.2, 0.2)
                        m.running_mean.uniform_(-0.2, 0.2)
                        m.running_var.uniform_(0.5, 2.0)
            transposed[name] = [
                f"{prefix}.{n}"
                for prefix, mod in (("bottleneck", bottleneck), ("decoder", decoder))
                for n, m in mod.named_modules()
                if isinstance(m, torch.nn.ConvTranspose2d)
            ]
            batch_norms[name] = [
                f"{prefix}.{n}"
                for prefix, mod in (("bottleneck", bottleneck), ("decoder", decoder))
                for n, m in mod.named_modules()
                if isinstance(m, torch.nn.BatchNorm2d)
            ]
            state = {
                f"{prefix}.{k}": v.detach().numpy()
                for prefix, mod in (("bottleneck", bottleneck), ("decoder", decoder))
                for k, v in mod.state_dict().items()
            }
            np.savez(os.path.join(folder, f"{name}_state.npz"), **state)
            feats = [
                np.abs(rng.standard_normal((BATCH, c, s, s))).astype(np.float32)  # post-ReLU-like features
                for c, s in zip(channels, SIZES)
            ]
            np.savez(os.path.join(folder, f"{name}_inputs.npz"), **{f"f{i}": f for i, f in enumerate(feats)})
            # A float64 copy tells float32 rounding (torch's own) from real differences.
            bottleneck64, decoder64 = copy.deepcopy(bottleneck).double(), copy.deepcopy(decoder).double()
            torch_out, torch64_out = {}, {}
            for mode in ("eval", "train"):
                # eval first: a train-mode forward updates the running statistics in place.
                for out, b, d, dtype in (
                    (torch_out, bottleneck, decoder, torch.float32),
                    (torch64_out, bottleneck64, decoder64, torch.float64),
                ):
                    b.train(mode == "train")
                    d.train(mode == "train")
                    with torch.no_grad():
                        outs = d(b([torch.from_numpy(f).to(dtype) for f in feats]))
                    for i, o in enumerate(outs):
                        out[f"{mode}_d{i}"] = o.numpy()
            results["cases"][name] = {"param_counts_anomalib": count, "torch_out": torch_out, "torch64": torch64_out}
        meta = {"cases": list(CASES), "transposed": transposed, "batch_norms": batch_norms}
        json.dump(meta, open(os.path.join(folder, "meta.json"), "w"))
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
        t0 = time.perf_counter()
        subprocess.run([OURS_PYTHON, os.path.abspath(__file__), "--ours", folder], check=True, cwd=REPO, env=env)
        ours_s = time.perf_counter() - t0
        got = dict(np.load(os.path.join(folder, "ours.npz")))
    report = {
        "what": "anomalib 2.7 Reverse Distillation OCBE + decoder vs xray_flax's, same weights, random inputs",
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "input_sizes": {name: [[BATCH, c, s, s] for c, s in zip(ch, SIZES)] for name, ch in CASES.items()},
        "target_rel_max_abs_diff": TARGET,
        "ours_subprocess_s": round(ours_s, 1),
        "cases": {},
    }
    ok = True
    for name, case in results["cases"].items():
        diffs = {}
        for key, ref in case["torch_out"].items():
            mine, ref64 = got[f"{name}_{key}"], case["torch64"][key]
            diffs[key] = {
                "shape": list(ref.shape),
                "rel_max_abs_diff": _rel(mine, ref),
                "ours_vs_torch_float64": _rel(mine, ref64),
                "torch_float32_vs_float64": _rel(ref, ref64),
            }
            ok &= diffs[key]["rel_max_abs_diff"] <= TARGET
        count = case["param_counts_anomalib"]
        ours_params = int(got[f"{name}_params"])
        report["cases"][name] = {
            "param_counts_anomalib": count,
            "params_ours": ours_params,
            "ours_equals_anomalib_minus_unused_conv4_bn4": ours_params == count["total"] - count["conv4_bn4_unused"],
            "ours_equals_anomalib_params_with_gradient": ours_params == count["with_gradient"],
            "outputs": diffs,
        }
        ok &= ours_params == count["with_gradient"]
    report["all_within_target"] = bool(ok)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "peer_rd_heads.json"))
    parser.add_argument("--ours", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours:
        ours(args.ours)
        return 0
    report = torch_side(args)
    text = json.dumps(report, indent=2)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    return 0 if report["all_within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
