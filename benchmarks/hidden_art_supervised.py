"""A supervised head on the simulator's truth (the 2024 author's "answer key"):
a small per-pixel network trained on the hidden mask of training paintings, reported only with
its shifts: trained on one kind of hidden layer and tested on the other, on a held-out seed,
with nothing hidden, with noisier or visible-only bands.

    python benchmarks/hidden_art_supervised.py [--size 96] [--train-seed 0] [--test-seed 7]
        [--out FILE.json]

Per pixel the features are the RGB (3), the bands (B) and the per-painting regression's signed
residual of every band in noise units (`configs/hidden_polynomial.py`, B): 19 numbers for 8
bands. The head: scikit-learn's `MLPClassifier` (one hidden layer of 32, Adam, 30 epochs, a
fixed seed) on up to 60,000 pixels drawn from the 12 training paintings of `--train-seed`
(hidden_kind underdrawing, composition or mixed). Scored: AUROC and average precision of its
probability on the 4 validation paintings of `--test-seed` (never used in training), per test
condition. This is no method of the family: it needs the truth, which no real painting has;
it says how much a supervised model could add on the simulator and how little of that survives
a change of the hidden layer's kind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import jax
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neural_network import MLPClassifier

from xray_flax.hidden_art import methods
from xray_flax.hidden_art import simulate as S

KINDS = ("underdrawing", "composition", "mixed")


def _polynomial():
    spec = importlib.util.spec_from_file_location("hidden_polynomial", "configs/hidden_polynomial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return methods.build(module.get_config())


def _scenes(seed: int, split: str, size: int, **sim) -> list[dict]:
    params = S.SimulationParams(n_scenes=16, n_val=4, size=size, seed=seed, **sim)
    indices = range(params.n_train) if split == "train" else range(params.n_train, params.n_scenes)
    return [S.simulate_scene(params, i) for i in indices]


def features(method, scenes: list[dict]) -> np.ndarray:
    """[N, H, W, 3 + 2B]: RGB, bands, the per-painting regression's noise-scaled signed residual."""
    batch = method.collate([method.item(s) for s in scenes], None)
    out = jax.device_get(jax.jit(method.dissimilarity)({}, batch))
    residual = np.asarray(out["per_band"])  # signed, noise-scaled (the config's form)
    return np.concatenate([np.asarray(batch["rgb"]), np.asarray(batch["bands"]), residual], axis=-1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=7)
    parser.add_argument("--pixels", type=int, default=60_000)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    method = _polynomial()
    rng = np.random.default_rng(0)
    conditions = {
        "same kind": {},
        "strength 0 (nothing hidden)": {"strength": 0.0},
        "band noise 3 %": {"band_noise": 0.03},
        "visible bands only": {"wavelength_max": 700.0},
    }
    results = {}
    for train_kind in KINDS:
        train = _scenes(args.train_seed, "train", args.size, hidden_kind=train_kind)
        x = features(method, train).reshape(-1, 19)
        y = np.concatenate([s["hidden_mask"].ravel() for s in train])
        pick = rng.choice(len(x), min(args.pixels, len(x)), replace=False)
        started = time.perf_counter()
        head = MLPClassifier((32,), max_iter=30, random_state=0).fit(x[pick], y[pick])
        fit_seconds = time.perf_counter() - started
        tests = dict(conditions)
        for other in KINDS:
            if other != train_kind:
                tests[f"tested on {other}"] = {"hidden_kind": other}
        for name, sim in tests.items():
            sim = {"hidden_kind": train_kind, **sim}
            scenes = _scenes(args.test_seed, "val", args.size, **sim)
            probability = head.predict_proba(features(method, scenes).reshape(-1, 19))[:, 1]
            probability = probability.reshape(len(scenes), args.size, args.size)
            auroc = [roc_auc_score(s["hidden_mask"].ravel(), p.ravel()) for s, p in zip(scenes, probability)]
            ap = [average_precision_score(s["hidden_mask"].ravel(), p.ravel()) for s, p in zip(scenes, probability)]
            key = f"trained on {train_kind}: {name}"
            results[key] = {"auroc": float(np.mean(auroc)), "auroc_min": float(np.min(auroc)), "ap": float(np.mean(ap))}
            print(f"{key:55s} AUROC {np.mean(auroc):.3f} (min {np.min(auroc):.3f}) AP {np.mean(ap):.3f}", flush=True)
        results[f"trained on {train_kind}: fit seconds"] = fit_seconds
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"argv": argv, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
