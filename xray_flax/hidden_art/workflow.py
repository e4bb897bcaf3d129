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

from xray_flax import config_rules, errors, files, workdir_lock
from xray_flax.hidden_art import dissimilarity, evaluate, graphs, maps, methods, paintings, regression, train

# config.train's knobs (xray_flax/hidden_art/config.py) and their least values.
TRAIN_MINIMUMS = {"num_steps": 0, "batch_size": 1, "crop": 0, "log_every": 1, "checkpoint_every": 1}
# The enumerated `config.model` knobs a method may have, and their values.
MODEL_CHOICES = {
    "sign": maps.SIGNS,
    "scale": maps.SCALES,
    "combination": maps.COMBINATIONS,
    "normalisation": dissimilarity.NORMALISATIONS,
    "loss": regression.LOSSES,
    "standardise": graphs.STANDARDISATIONS,
}


def check(config: ml_collections.ConfigDict, *, reads_data: bool = True, build: bool = True) -> list[str]:
    """The problems of a hidden-art config, one sentence each (`xray_flax.config_check` gathers
    them before a run writes anything). `reads_data`: the run reads the paintings (a folder named
    must exist); `build`: also build the method (pure; its ConfigError is a problem), which needs
    the knobs' types right."""
    problems = paintings.check(config, reads_data=reads_data)
    problems += _method_problems(config, build)
    problems += config_rules.integer("config.seed", config.seed)
    for name, minimum in TRAIN_MINIMUMS.items():
        problems += config_rules.integer(f"config.train.{name}", config.train[name], minimum)
    problems += config_rules.number("config.optim.learning_rate", config.optim.learning_rate, 0.0, low_open=True)
    problems += config_rules.number("config.optim.weight_decay", config.optim.get("weight_decay", 0.0), 0.0)
    problems += config_rules.number("config.eval.threshold", config.eval.threshold, 0.0, low_open=True)
    return problems


def _method_problems(config: ml_collections.ConfigDict, build: bool) -> list[str]:
    """`config.method_name` and the enumerated `config.model` knobs; then what the method's
    build refuses (pure: its ConfigError is the problem)."""
    model = config.get("model", {})
    problems = config_rules.one_of("config.method_name", config.method_name, methods.REGISTRY)
    for knob, allowed in MODEL_CHOICES.items():
        if knob in model:
            problems += config_rules.one_of(f"config.model.{knob}", model[knob], allowed)
    if build and not problems:
        try:
            methods.build(config)
        except errors.ConfigError as e:
            problems += errors.problems_of(e)
    return problems


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
