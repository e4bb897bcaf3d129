"""PatchCore's local reference (`model.self_radius`) swept on a fitted PatchCore, no refit.

For every radius r and three combinations of a patch's bank distance with its tile-self
distance (the nearest patch of its own tile more than r grid cells away): `self` alone (no
training bank: a zero-shot detector), `min` (what `model.self_radius` does) and `sum` (each
divided by its median first), the validation and test tile ROC-AUC of the plain-maximum image
score. Choose r and the form on the validation rows only.

With --whiten, every distance is taken after a PCA whitening (scikit-learn, `whiten=True`, all
components) fitted on the features of every clean training tile: the simplest adaptation of the
frozen ImageNet features to the user's own scans, with no labels and no training.

    python benchmarks/patchcore_self_reference.py WORKDIR [--whiten]    # a fitted PatchCore's workdir
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.decomposition import PCA

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from xray_flax import checkpoint, detectors, metrics, parallel, steps, workdir_config  # noqa: E402
from xray_flax.data import pipeline  # noqa: E402
from xray_flax.detectors import patchcore  # noqa: E402
from xray_flax.detectors.patchcore import distance  # noqa: E402
from xray_flax.detectors.patchcore import steps as pc  # noqa: E402


def main(workdir: str, whiten: bool = False) -> None:
    config = workdir_config.get_config(workdir)
    detector = detectors.build(config)
    plan = patchcore.make_plan(config)
    mesh = parallel.make_mesh(config.mesh)
    abstract = steps.replicated_abstract(
        detector.abstract_variables(config.data.patch_size, config.data.channels), mesh
    )
    variables, _, _ = checkpoint.restore_for_inference(workdir, abstract)
    splits = pipeline.prepare_splits(config.data, workdir)
    embed = jax.jit(lambda v, x: pc.embed(v, x, plan=plan))
    bank, valid = variables[pc.MEMORY]["bank"], variables[pc.MEMORY]["valid"]
    transform = None
    if whiten:
        train = []
        for batch in pipeline.iterate_eval_batches(splits, "train", config.data, batch_size=32):
            clean = np.asarray(batch["label"]) == 0
            train.append(np.asarray(embed(variables, jnp.asarray(batch["image"])))[clean])
        train = np.concatenate(train)
        pca = PCA(whiten=True).fit(train.reshape(-1, train.shape[-1]))
        transform = pca.transform
        bank = jnp.asarray(transform(np.asarray(bank, np.float64)), jnp.float32)
        print(f"whitened with a PCA of {train.shape[0] * train.shape[1] * train.shape[2]} training patch features")
    for split in ("val", "test"):
        features, labels = [], []
        for batch in pipeline.iterate_eval_batches(splits, split, config.data, batch_size=32):
            features.append(np.asarray(embed(variables, jnp.asarray(batch["image"]))))
            labels.append(batch["label"])
        features, labels = np.concatenate(features), np.concatenate(labels)
        b, h, w, d = features.shape
        if transform is not None:
            features = transform(features.reshape(-1, d)).reshape(b, h, w, d).astype(np.float32)
        nearest, _ = distance.search(jnp.asarray(features.reshape(-1, d)), bank, valid, 1, **plan.search_options())
        to_bank = np.asarray(nearest[:, 0]).reshape(b, h * w)
        patches = jnp.asarray(features.reshape(b, h * w, d))
        known = labels >= 0

        def auc(patch_scores, labels=labels[known], known=known):
            return metrics.roc_auc(labels, patch_scores.max(1)[known])

        print(f"{split}: {b} tiles, {h} x {w} grid; bank only {auc(to_bank):.4f}")
        for radius in (1, 2, 3, 4, 6):
            # The detector's own computation (model.self_radius), not a copy of it.
            to_self = np.asarray(distance.tile_self_distances(patches, h, w, radius))
            forms = {
                "self": to_self,
                "min": np.minimum(to_bank, to_self),
                "sum": to_bank / np.median(to_bank) + to_self / np.median(to_self),
            }
            print(f"  r={radius} " + "  ".join(f"{name} {auc(s):.4f}" for name, s in forms.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], whiten="--whiten" in sys.argv[2:])
