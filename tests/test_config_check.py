"""The whole config is checked before a run writes anything: one ConfigError listing every
problem, each naming the key, the bad value and what is allowed (xray_flax/config_check.py)."""

from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import tiny
from xray_flax import config_check, detectors, errors, workdir_config, workflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(
    os.path.basename(path)[:-3]
    for path in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if os.path.basename(path) not in ("__init__.py", "base.py", "hidden_base.py")
)


def _problems(config, mode="train") -> str:
    """The message of the ConfigError the check raises (it must raise one)."""
    with pytest.raises(errors.ConfigError) as raised:
        config_check.check(config, mode)
    message = str(raised.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------
# One test per class of mistake.


def test_an_unknown_choice_names_the_key_the_value_and_the_choices():
    config = tiny.get_config()
    config.data.normalization = "percentil"
    message = _problems(config)
    assert message == "config.data.normalization='percentil' is not one of 'bit_depth', 'percentile'"
    config = tiny.get_config()
    config.eval.threshold_metric = "F1"
    assert "config.eval.threshold_metric='F1' is not one of 'f1', 'youden'" in _problems(config)


def test_a_value_out_of_range_names_the_range():
    config = tiny.get_config()
    config.data.patch_size = 0
    assert _problems(config) == "config.data.patch_size=0 must be an int >= 1"
    config = tiny.get_config()
    config.eval.predict.overlap = 1.0
    assert _problems(config) == "config.eval.predict.overlap=1.0 must be a number in [0, 1)"
    config = tiny.get_config()
    config.train.num_steps = 0
    assert _problems(config) == "config.train.num_steps=0 must be an int >= 1"


def test_a_value_of_the_wrong_type_names_the_type_wanted():
    # A config file's ml_collections refuses a float for an int knob; a config.json does not.
    values = tiny.get_config().to_dict()
    values["data"]["patch_size"] = 32.5
    values["train"]["batch_size"] = True
    message = _problems(ml_collections.ConfigDict(values))
    assert "config.data.patch_size=32.5 must be an int (a float was given)" in message
    assert "config.train.batch_size=True must be an int (a bool was given)" in message
    assert message.startswith("config has 2 problems: ")


def test_a_missing_folder_or_file_is_named(tmp_path):
    config = tiny.get_config()
    config.data.source = "scans"
    config.data.root = str(tmp_path / "no_such_scans")
    assert _problems(config) == f"config.data.root={config.data.root!r}: no such folder"
    (tmp_path / "a_file").write_text("")
    config.data.root = str(tmp_path / "a_file")
    assert _problems(config) == f"config.data.root={config.data.root!r} is a file, not a folder"
    config.data.root = ""
    assert "config.data.root='' must name a folder for config.data.source='scans'" in _problems(config)
    # Weights are read when training only: a checkpoint holds what they gave.
    config = tiny.get_config("stfpm")
    config.backbone.weights = str(tmp_path / "resnet18.pth")
    assert _problems(config, "train") == f"config.backbone.weights={config.backbone.weights!r}: no such file"
    config_check.check(config, "evaluate")
    # predict reads only the scans it is given.
    config = tiny.get_config()
    config.data.source = "scans"
    config.data.root = str(tmp_path / "moved_away")
    config_check.check(config, "predict")


def test_detector_specific_constraints_are_checked():
    config = tiny.get_config()  # DRAEM as configured: three halvings
    config.data.patch_size = 36
    message = _problems(config)
    assert message.startswith("config.data.patch_size=36 must be a multiple of 8 for the draem detector")
    config = tiny.get_config("reverse_distillation")  # twice the backbone's deepest stride
    config.data.patch_size = 40
    assert "config.data.patch_size=40 must be a multiple of 16 for the reverse_distillation detector" in (
        _problems(config)
    )
    # What a detector's build refuses is a problem too.
    config = tiny.get_config("padim")
    config.model.accumulate = "no_such_mode"
    assert "config.model.accumulate='no_such_mode'" in _problems(config)
    config = tiny.get_config()
    config.model.compute_dtype = "float16"
    assert "config.model.compute_dtype='float16'" in _problems(config)
    assert "'bfloat16', 'float32'" in _problems(config)


def test_synthesis_and_hidden_art_knobs_are_checked():
    config = tiny.get_config()
    config.synthesis.blend = "mix"
    config.synthesis.augmentations = ("gamma", "blur")
    message = _problems(config)
    assert "config.synthesis.blend='mix' is not one of 'paper', 'draem'" in message
    assert "config.synthesis.augmentations=('gamma', 'blur'): unknown ['blur']" in message
    hidden = importlib.import_module("configs.hidden_gcn").get_config()
    hidden.data.source = "file"
    hidden.model.standardise = "pixel"
    hidden.train.batch_size = 0
    message = _problems(hidden)
    assert "config.data.source='file' is not one of 'simulated', 'files'" in message
    assert "config.model.standardise='pixel' is not one of 'image', 'graph', 'none'" in message
    assert "config.train.batch_size=0 must be an int >= 1" in message
    hidden = importlib.import_module("configs.hidden_plain").get_config()
    hidden.data.simulation.size = 8
    assert _problems(hidden) == "config.data.simulation.size=8 must be at least 32 px"


def test_several_mistakes_are_listed_at_once_on_one_line():
    config = tiny.get_config()
    config.data.normalization = "percentil"
    config.data.border = "padd"
    config.data.source = "scan"
    config.data.patch_size = 0
    config.eval.predict.map_format = "png"
    message = _problems(config)
    assert message.startswith("config has 5 problems: ")
    for part in (
        "config.data.normalization='percentil' is not one of 'bit_depth', 'percentile'",
        "config.data.border='padd' is not one of 'pad', 'shift', 'drop'",
        "config.data.source='scan' is not one of 'simulated', 'scans', 'mvtec', 'folder', 'tfds'",
        "config.data.patch_size=0 must be an int >= 1",
        "config.eval.predict.map_format='png' is not one of 'tiff', 'npy'",
    ):
        assert part in message
    assert errors.problems_of(pytest.raises(errors.ConfigError, config_check.check, config).value)[3] == (
        "config.data.patch_size=0 must be an int >= 1"
    )


def _variants(name: str) -> list:
    """The arguments a config file's get_config takes (configs/tiny.py: every detector)."""
    if name == "tiny":
        return detectors.names()
    return list(getattr(importlib.import_module(f"configs.{name}"), "VARIANTS", [None]))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_passes(name, tmp_path):
    for variant in _variants(name):
        module = importlib.import_module(f"configs.{name}")
        config = module.get_config() if variant is None else module.get_config(variant)
        if config.get("family") != "hidden_art" and config.data.source != "simulated" and not config.data.root:
            # A config for the user's own folder: the one problem is the folder to name.
            assert config_check.problems(config, "train") == [
                f"config.data.root='' must name a folder for config.data.source={config.data.source!r}"
            ]
            config.data.root = str(tmp_path)
        for mode in workflow.MODES:
            assert config_check.problems(config, mode) == [], (name, variant, mode)


# ------------------------------------------------------------------------------------------
# Nothing is written before the check.


def test_run_checks_before_anything_is_written(tmp_path):
    config = tiny.get_config()
    config.data.border = "padd"
    config.data.simulated.cache_dir = str(tmp_path / "cache")
    workdir = tmp_path / "run"
    for mode in ("train", "evaluate", "predict"):
        with pytest.raises(errors.ConfigError, match=r"config\.data\.border='padd'"):
            workflow.run(config, str(workdir), mode, inputs=["scan.png"])
    with pytest.raises(errors.ConfigError, match=r"config\.data\.border='padd'"):
        workflow.train_and_evaluate(config, str(workdir))
    hidden = importlib.import_module("configs.hidden_plain").get_config()
    hidden.model.combination = "median"
    with pytest.raises(errors.ConfigError, match=r"config\.model\.combination='median'"):
        workflow.run(hidden, str(workdir), "train")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mode", ["evaluate", "predict"])
def test_evaluate_and_predict_check_the_saved_config_with_its_overrides(tmp_path, mode):
    """Without --config: the workdir's config.json (as main loads it), with an override
    applied, is checked the same way, and the workdir is left as it was."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(tiny.get_config().to_json_best_effort(indent=2))
    before = {p: os.path.getmtime(workdir / p) for p in os.listdir(workdir)}
    config = workdir_config.load(str(workdir))
    config.eval.threshold_metric = "F1"  # --config.eval.threshold_metric=F1
    with pytest.raises(errors.ConfigError) as raised:
        workflow.run(config, str(workdir), mode, inputs=["scan.png"])
    assert str(raised.value) == "config.eval.threshold_metric='F1' is not one of 'f1', 'youden'"
    assert {p: os.path.getmtime(workdir / p) for p in os.listdir(workdir)} == before
    assert os.listdir(tmp_path) == ["run"]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xray_flax.main", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "override, problem",
    [
        ("data.normalization=percentil", "config.data.normalization='percentil' is not one of"),
        ("data.border=padd", "config.data.border='padd' is not one of 'pad', 'shift', 'drop'"),
        ("data.source=scan", "config.data.source='scan' is not one of 'simulated', 'scans'"),
        ("data.patch_size=0", "config.data.patch_size=0 must be an int >= 1"),
    ],
)
def test_a_bad_value_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, override, problem):
    workdir = tmp_path / "run"
    result = _cli("--config", "configs/tiny.py", "--workdir", str(workdir), f"--config.{override}")
    assert result.returncode == errors.EXIT_USAGE, result.stderr
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and problem in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()
