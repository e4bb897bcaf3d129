"""How well a training-free hidden-art method recovers the hidden layer of simulated paintings,
under the simulator's knobs and shifts: the measurements behind docs/results.md ("Hidden-art
extraction") and the thresholds of tests/test_hidden_art_recovery.py.

    python benchmarks/hidden_art_recovery.py [--config configs/hidden_polynomial.py] [--seed 0]
        [--size 128] [--split val] [--sim strength=0.5 --sim band_noise=0.03 ...]
        [--set model.degree=3 ...] [--shift-rgb 1] [--forms] [--oracle] [--out FILE.json]
    python benchmarks/hidden_art_recovery.py --outputs runs/hidden_regression/hidden_art --forms

The paintings are `xray_flax.hidden_art.simulate` scenes of (n_scenes 16, n_val 4, size, seed,
the --sim knobs), quantised as the cache stores them (8-bit RGB, 16-bit bands), so the numbers
equal a run of `python -m xray_flax.main` on the same config. `--split val` scores the 4
validation paintings (indices 12-15), `all` all 16. The method is `methods.build(config)` (so
it sees the paintings without their truth). `--shift-rgb K` rolls the RGB by K px along both
axes (misregistration). `--forms` also scores every map form (sign x scale x combination,
`maps.form`) of the method's signed residual. `--oracle` scores instead the reference that
knows the truth: visible-only band - band at the longest band (what the hidden layer did, plus
noise); it is no method, only the upper end of the ordering test. `--outputs DIR` scores instead
the "signed" residuals a run saved (`DIR/<painting>_<method>_outputs.npz`, any method, trained
ones included) on the same paintings: with `--forms`, every map form of a trained network
without rerunning it.

Per painting and their mean and minimum: AUROC and average precision of the hidden mask
(scikit-learn), printed and written to --out.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib.util
import itertools
import json
import os
import sys
import time

import jax
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from xray_flax.hidden_art import maps, methods
from xray_flax.hidden_art import simulate as S


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("hidden_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def paintings(args, config) -> list[dict]:
    sim = dict(config.data.simulation)
    sim.update({"size": args.size, "seed": args.seed})
    for item in args.sim:
        key, value = item.split("=", 1)
        sim[key] = _value(value)
    params = S.SimulationParams.from_config(sim)
    indices = range(params.n_train, params.n_scenes) if args.split == "val" else range(params.n_scenes)
    scenes = []
    for i in indices:
        layers = S.simulate_layers(params, i)
        layers["rgb"] = np.round(layers["rgb"] * 255.0) / 255.0  # as the cache's 8-bit PNG
        layers["bands"] = np.round(layers["bands"] * 65535.0) / 65535.0  # 16-bit PNGs
        if args.shift_rgb:
            layers["rgb"] = np.roll(layers["rgb"], (args.shift_rgb, args.shift_rgb), axis=(0, 1))
        scenes.append(layers)
    return scenes


def scores(maps_: np.ndarray, masks: list[np.ndarray]) -> dict:
    auroc = [float(roc_auc_score(m.ravel(), x.ravel())) for x, m in zip(maps_, masks)]
    ap = [float(average_precision_score(m.ravel(), x.ravel())) for x, m in zip(maps_, masks)]
    prevalence = [float(m.mean()) for m in masks]
    return {
        "auroc": auroc,
        "auroc_mean": float(np.mean(auroc)),
        "auroc_min": float(np.min(auroc)),
        "average_precision": ap,
        "average_precision_mean": float(np.mean(ap)),
        "prevalence_mean": float(np.mean(prevalence)),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/hidden_polynomial.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--split", choices=("val", "all"), default="val")
    parser.add_argument("--sim", action="append", default=[], help="simulation knob=value")
    parser.add_argument("--set", action="append", default=[], help="model.knob=value")
    parser.add_argument("--shift-rgb", type=int, default=0)
    parser.add_argument("--forms", action="store_true")
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--outputs", default="", help="a run's hidden_art/ folder: score its saved residuals")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    for item in args.set:
        key, value = item.split("=", 1)
        section, knob = key.split(".", 1)
        config[section][knob] = _value(value)
    if config.train.num_steps and not args.outputs:
        sys.exit(f"{args.config} is a trained method; this script scores training-free ones (use the CLI)")
    scenes = paintings(args, config)
    masks = [s["hidden_mask"] for s in scenes]
    started = time.perf_counter()
    if args.outputs:
        saved = [glob.glob(os.path.join(args.outputs, f"{s['name']}_*_outputs.npz")) for s in scenes]
        if not all(len(found) == 1 for found in saved):
            sys.exit(f"need one <painting>_<method>_outputs.npz per painting in {args.outputs}, found {saved}")
        signed = np.stack([np.load(found[0])["signed"] for found in saved])
        outputs = {"signed": signed, **maps.form(signed, **methods.form_of(config.model, maps.DEFAULT_FORM))}
        name = f"saved residuals of {args.outputs}"
    elif args.oracle:
        signed = np.stack([s["visible_only"] - s["bands"] for s in scenes])
        outputs = maps.form(signed, sign="signed", scale="none", combination="longest")
        name = "oracle (visible-only band - band, longest band)"
    else:
        method = methods.build(config)
        batch = method.collate([method.item(s) for s in scenes], None)
        outputs = jax.device_get(jax.jit(method.dissimilarity)({}, batch))
        name = method.name
    seconds = time.perf_counter() - started
    result = {
        "method": name,
        "config": args.config,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "paintings": [s["name"] for s in scenes],
        "seconds_with_compilation": seconds,
        **scores(np.asarray(outputs["map"]), masks),
    }
    print(
        f"{name}: AUROC mean {result['auroc_mean']:.3f} min {result['auroc_min']:.3f} "
        f"({', '.join(f'{a:.3f}' for a in result['auroc'])}); AP mean {result['average_precision_mean']:.3f} "
        f"(prevalence {result['prevalence_mean']:.3f})"
    )
    if args.forms and "signed" in outputs:
        result["forms"] = {}
        for sign, scale, combination in itertools.product(maps.SIGNS, maps.SCALES, maps.COMBINATIONS):
            form = maps.form(outputs["signed"], sign=sign, scale=scale, combination=combination)
            s = scores(np.asarray(form["map"]), masks)
            key = f"{sign}/{scale}/{combination}"
            result["forms"][key] = {k: s[k] for k in ("auroc_mean", "auroc_min", "average_precision_mean")}
            auroc, ap = f"AUROC {s['auroc_mean']:.3f} (min {s['auroc_min']:.3f})", s["average_precision_mean"]
            print(f"  {key:28s} {auroc} AP {ap:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
