"""Why DRAEM-family validation ROC-AUC sits near chance until the learning-rate decay.

Reads every checkpoint of a DRAEM-family run (the paper's model or DRAEM, trained with a small
`train.checkpoint_every` and a large `train.keep_checkpoints`) and scores its validation split
several ways, each isolating one suspect:

    running     the checkpoint as evaluation uses it (BatchNorm running statistics): the
                number the training loop logs
    re-est.     the same weights, BatchNorm statistics re-estimated: `--bn_batches` forward
                passes in training mode over training batches with synthetic anomalies (the
                training distribution) at the FIXED weights, each pass folding its batch
                statistics into the running ones with the module's momentum (0.9), so the
                statistics belong to these weights and not to the last ~10 optimiser steps
    logit       running statistics, image score from the logit margin l1 - l0 instead of the
                softmax probability (a probability that underflows to 0 ties every tile)
    synthetic   pixel AUROC on synthetic anomalies pasted into the validation split's normal
                tiles (running statistics): has the discriminator learnt its own task yet?

and prints the spread of the scores (standard deviation, share of tiles tied at the median
score). Usage:

    python benchmarks/draem_dynamics.py --workdir WORKDIR [--bn_batches 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from xray_flax import checkpoint, detectors, metrics, parallel, scoring, steps, workdir_config  # noqa: E402
from xray_flax.data import pipeline  # noqa: E402
from xray_flax.detectors.draem import network  # noqa: E402
from xray_flax.synthesis import SynthesisSpec, synthesize_batch  # noqa: E402


def _val_tiles(splits, data_config, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch in pipeline.iterate_eval_batches(splits, "val", data_config, batch_size=batch_size):
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)


def _train_batches(splits, config, n: int) -> list[np.ndarray]:
    it = pipeline.make_train_iterator(
        splits, config.data, batch_size=config.train.batch_size, seed=config.seed + 1, process_index=0, process_count=1
    )
    return [np.asarray(next(it)["image"]) for _ in range(n)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--bn_batches", type=int, default=50)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    config = workdir_config.get_config(args.workdir)
    detector = detectors.build(config)
    model = network.build_model(config.model, config.data.channels)
    spec = SynthesisSpec.from_config(config.synthesis, config.data.channels)
    textures = jnp.asarray(detector.make_aux())
    splits = pipeline.prepare_splits(config.data, args.workdir)
    images, labels = _val_tiles(splits, config.data)
    known = labels >= 0
    normal = images[labels == 0]
    train_batches = _train_batches(splits, config, args.bn_batches)
    filter_size = scoring.score_filter_size(config)
    top_k = scoring.score_top_k(config)
    mesh = parallel.make_mesh(config.mesh)
    abstract = steps.replicated_abstract(
        detector.abstract_variables(config.data.patch_size, config.data.channels), mesh
    )

    @jax.jit
    def maps(variables, x):
        _, logits = model.apply(variables, x, train=False)
        return network.anomaly_probability(logits), logits[..., 1] - logits[..., 0]

    # One training-mode pass at fixed weights: what config.train.refresh_statistics_batches runs.
    refresh = jax.jit(detector.refresh_statistics)

    @jax.jit
    def synthetic_val(key, x):
        return synthesize_batch(key, x, textures, spec)

    def scores_of(variables, x, batch: int = 32):
        probs, margins = [], []
        for i in range(0, len(x), batch):
            p, m = maps(variables, jnp.asarray(x[i : i + batch]))
            probs.append(np.asarray(metrics.image_scores(p, filter_size, top_k)))
            margins.append(np.asarray(metrics.image_scores(m, filter_size, top_k)))
        return np.concatenate(probs), np.concatenate(margins)

    synth = synthetic_val(jax.random.key(123), jnp.asarray(normal[:64]))
    directory = os.path.join(os.path.abspath(args.workdir), checkpoint.LATEST_DIR)
    steps_found = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    rows = []
    print("step  running  re-est.  logit  synthetic  score sd  tied  mean p(normal)")
    for step in steps_found:
        variables, _, _ = checkpoint.restore_for_inference(args.workdir, abstract, os.path.join(directory, str(step)))
        variables = jax.device_get(variables)
        prob, margin = scores_of(variables, images)
        reest = variables
        for i, x in enumerate(train_batches):
            reest = refresh(reest, {"image": jnp.asarray(x)}, jax.random.key(1000 + i), textures)
        prob_re, _ = scores_of(reest, images)
        p_syn, _ = maps(variables, synth["image"])
        mask = np.asarray(synth["mask"][..., 0] > 0.5).ravel()
        syn_auc = metrics.roc_auc(mask.astype(int), np.asarray(p_syn).ravel()) if 0 < mask.mean() < 1 else float("nan")
        row = {
            "step": step,
            "running": metrics.roc_auc(labels[known], prob[known]),
            "reestimated": metrics.roc_auc(labels[known], prob_re[known]),
            "logit": metrics.roc_auc(labels[known], margin[known]),
            "synthetic_pixel": syn_auc,
            "score_sd": float(np.std(prob)),
            "tied": float(np.mean(prob == np.median(prob))),
            "mean_p_normal": float(np.mean(prob[labels == 0])),
        }
        rows.append(row)
        print(
            f"{step:4d}  {row['running']:.3f}    {row['reestimated']:.3f}    {row['logit']:.3f}  "
            f"{row['synthetic_pixel']:.3f}      {row['score_sd']:.4f}   {row['tied']:.2f}  {row['mean_p_normal']:.4f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"workdir": args.workdir, "bn_batches": args.bn_batches, "rows": rows}, f, indent=1)
    return {"rows": rows}


if __name__ == "__main__":
    main()
