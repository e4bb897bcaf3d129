"""The hidden-art family's job: train a method (gradient methods only), then evaluate it.

    python -m xray_flax.main --config configs/hidden_<method>.py --workdir DIR [--mode evaluate]

`train_and_evaluate` loads the training and validation paintings (the simulated multispectral
paintings of `xray_flax.hidden_art.simulate` by default, or the ArtExtract / CAVE / .mat
layouts of `config.data.root`), trains a gradient method for `config.train.num_steps` steps
(xray_flax/hidden_art/train.py: random paintings, the same random crop and flips for the RGB and
its bands, `DIR/checkpoints/` every `config.train.checkpoint_every` steps; a rerun resumes),
then evaluates it on the validation paintings (xray_flax/hidden_art/evaluate.py). The training
losses go to TensorBoard (DIR).
"""

from __future__ import annotations

import os

import ml_collections

from xray_flax import errors, files, workdir_lock
from xray_flax.hidden_art import evaluate, methods, paintings, train


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Train (resuming if possible) and evaluate; None when training stopped early."""
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock.WorkdirLock(workdir):
        files.write_text_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1) + "\n")
        method = methods.build(config)
        variables = train.train(config, workdir, method, paintings.load_split(config, config.data.train_split))
        if variables is None:
            return None
        return evaluate.evaluate(config, workdir, variables=variables, method=method)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str, output_dir: str | None = None) -> dict | None:
    """What `python -m xray_flax.main --mode MODE` does for a hidden-art config."""
    if mode == "predict":
        raise errors.UsageError("--mode predict is for X-ray detectors; hidden-art runs write their maps in evaluate")
    if mode == "train":
        return train_and_evaluate(config, workdir)
    return evaluate.evaluate(config, workdir, output_dir)
