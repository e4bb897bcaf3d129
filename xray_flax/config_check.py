"""One check of the whole config before a run creates or writes anything in its workdir.

`workflow.run` (every mode, both families) and `workflow.train_and_evaluate` call
`check(config, mode)` first, before the workdir, its lock, config.json, splits.json,
checkpoints/ or the simulated-data cache exist. It gathers every problem and raises one
`errors.ConfigError` listing them all on one line (``config has 3 problems: ...; ...; ...``),
each naming the key, the value and what is allowed:

* types: every knob against the code's default config of the same detector or hidden-art
  method (an int where an int belongs, a bool, a string, a tuple, a section);
* the sections' own rules, each kept by the package that owns the section (`check` functions:
  `data/config.py`, `evaluation_config.py`, `synthesis/config.py`; the hidden-art family's in
  `hidden_art/workflow.py`): enumerations, ranges, the folders and files a run reads;
* `config.train` and `config.mesh` (their defaults are the base config's): step counts and
  intervals >= 1, the batch divisible by the devices of the mesh;
* the detector: what its `build` refuses (pure: it writes nothing), the patch size it needs
  (`size_multiple`: pooling levels, backbone strides), a weights file named by the config.

The rules stay where the values are used too (the last line of defence), applied through the
same functions with `errors.require`.
"""

from __future__ import annotations

import re

import ml_collections

from xray_flax import backbones, config_rules, detectors, errors, evaluation_config, parallel, workdir_config
from xray_flax.data import config as data_config
from xray_flax.synthesis import config as synthesis_config

HIDDEN_ART = "hidden_art"
# The modes that read the configured data (predict reads the scans it is given, export none).
READS_DATA = ("train", "evaluate")

# config.train's knobs (configs' base config) and their least values; halt_after_steps may be None.
TRAIN_MINIMUMS = {
    "num_steps": 1,
    "batch_size": 1,
    "log_every": 1,
    "image_summary_every": 0,
    "eval_every": 1,
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
    "max_steps_in_flight": 1,
    "predict_test_scans": 0,
    "labelled_anomalies": 0,
    "labelled_per_batch": 1,
    "refresh_statistics_batches": 0,
}

_KEY = re.compile(r"config(\.\w+)+")
SECTION = "a section of knobs"


def check(config: ml_collections.ConfigDict, mode: str = "train") -> None:
    """Raises one `errors.ConfigError` listing every problem of `config` for `mode`; None when
    there is none. Reads no data and writes nothing."""
    errors.require(problems(config, mode))


def problems(config: ml_collections.ConfigDict, mode: str = "train") -> list[str]:
    """Every problem of `config` for `mode` (`workflow.MODES`), one sentence each.

    Files and folders are checked only where `mode` reads them: the data for train and evaluate
    (`READS_DATA`), weights and textures for train (a checkpoint holds what they gave).
    """
    types = type_problems(config, workdir_config.template(config))
    if any(SECTION in p for p in types):
        return types  # the rules read knobs inside the sections
    if config.get("family") == HIDDEN_ART:
        # Imported here: the hidden-art family pulls in jraph and the graph code, which the
        # X-ray detectors never need (as workflow.run).
        from xray_flax.hidden_art import workflow as hidden_art  # noqa: PLC0415

        found = hidden_art.check(config, reads_data=mode in READS_DATA, build=not types)
    else:
        found = _detector_config_problems(config, mode, wrong_types=bool(types))
    # A knob of the wrong type is reported once, as such.
    wrong = {_key(p) for p in types}
    return types + [p for p in found if _key(p) not in wrong]


def train_problems(train: ml_collections.ConfigDict) -> list[str]:
    """The problems of `config.train` (the detectors' loop)."""
    found = []
    for name, minimum in TRAIN_MINIMUMS.items():
        if name in train:
            found += config_rules.integer(f"config.train.{name}", train[name], minimum)
    found += config_rules.optional_integer("config.train.halt_after_steps", train.get("halt_after_steps"), 1)
    found += config_rules.number("config.train.memory_budget_gb", train.get("memory_budget_gb", 0.0), 0.0)
    return found


def type_problems(config, template, key: str = "config") -> list[str]:
    """Knobs whose value is not of the type of the same knob in `template` (the code's default
    config): an int for an int (not a float, not a bool), a number for a float, a bool, a
    string, a tuple, a section. None values and knobs the template lacks are left to the rules."""
    if template is None:
        return []
    found = []
    for name, expected in template.items():
        if name not in config:
            continue
        value, where = config[name], f"{key}.{name}"
        if isinstance(expected, ml_collections.ConfigDict):
            if isinstance(value, (ml_collections.ConfigDict, dict)):
                found += type_problems(value, expected, where)
            else:
                found.append(f"{where}={value!r} must be {SECTION} {config_rules.given(value)}")
            continue
        wanted = _wanted_type(expected, value)
        if wanted:
            found.append(f"{where}={value!r} must be {wanted} {config_rules.given(value)}")
    return found


def _wanted_type(expected, value) -> str:
    """'' when `value` may stand where the template has `expected`, else what it must be."""
    if value is None or expected is None:
        return ""
    if isinstance(expected, bool):
        return "" if isinstance(value, bool) else "True or False"
    if config_rules.is_int(expected):
        return "" if config_rules.is_int(value) else "an int"
    if isinstance(expected, float):
        return "" if config_rules.is_number(value) else "a number"
    if isinstance(expected, str):
        return "" if isinstance(value, str) else "a string"
    if isinstance(expected, (tuple, list)):
        return "" if isinstance(value, (tuple, list)) else "a tuple"
    return ""


def _key(problem: str) -> str:
    match = _KEY.match(problem)
    return match.group(0) if match else problem


def _detector_config_problems(config: ml_collections.ConfigDict, mode: str, *, wrong_types: bool) -> list[str]:
    """The X-ray detectors' config: data, eval, train, mesh, synthesis, backbone, the detector.
    `wrong_types`: some knob has the wrong type, which may trip a check that converts it."""
    found = data_config.check(config.data, reads_data=mode in READS_DATA)
    found += evaluation_config.check(config.eval, config.data.patch_size)
    found += config_rules.integer("config.seed", config.seed)
    found += train_problems(config.train)
    found += _mesh_problems(config)
    if "synthesis" in config:
        found += synthesis_config.check(config.synthesis, config.data.channels, reads_files=mode == "train")
    if "backbone" in config and mode == "train":
        found += backbones.weights_problems(config.backbone)
    try:
        found += detectors.check(config)
    except (TypeError, ValueError, KeyError, AttributeError):
        if not wrong_types:
            raise  # a bug: every value has its type
    return found


def _mesh_problems(config: ml_collections.ConfigDict) -> list[str]:
    """config.mesh.data, and the global batch split over its devices (known once JAX has started)."""
    found = parallel.mesh_problems(config.mesh)
    batch = config.train.batch_size
    if not found and config_rules.is_int(batch) and batch >= 1:
        found += parallel.batch_size_problems(batch, parallel.mesh_devices(config.mesh))
    return found
