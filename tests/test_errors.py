"""One error mechanism: every user-fixable error is an `errors.UserError`, every bad config
value an `errors.ConfigError` raised where the value is checked (not a ValueError that the
command line would have to recognise by its wording)."""

import errno
import inspect

import ml_collections
import numpy as np
import pytest

from configs import tiny
from xray_flax import backbones, checkpoint, detectors, errors, evaluation_config, files, normalization, workdir_lock
from xray_flax.data import config as data_config_lib
from xray_flax.data import readers, simulate, validate
from xray_flax.hidden_art import data as hidden_art_data
from xray_flax.hidden_art import simulate as hidden_art_simulate
from xray_flax.report import stitch
from xray_flax.synthesis import synthesize
from xray_flax.weights import errors as weights_errors

# The user-fixable error classes and the base each had before UserError (kept, so that code
# catching the old base still catches them).
USER_ERRORS = [
    (readers.DataError, Exception),
    (hidden_art_data.BandShapeError, readers.DataError),
    (checkpoint.CheckpointError, RuntimeError),
    (checkpoint.CorruptCheckpointError, checkpoint.CheckpointError),
    (workdir_lock.WorkdirLockedError, RuntimeError),
    (weights_errors.WeightsError, ValueError),
    (files.DiskSpaceError, OSError),
    (stitch.NonFiniteMapError, ValueError),
    (errors.ConfigError, ValueError),
]


@pytest.mark.parametrize("cls, old_base", USER_ERRORS, ids=lambda c: getattr(c, "__name__", ""))
def test_user_fixable_errors_are_user_errors_and_keep_their_old_base(cls, old_base):
    assert issubclass(cls, errors.UserError) and issubclass(cls, old_base)


def test_every_data_error_is_a_user_error():
    data_errors = [c for _, c in inspect.getmembers(readers, inspect.isclass) if issubclass(c, readers.DataError)]
    assert len(data_errors) >= 8
    assert all(issubclass(c, errors.UserError) for c in data_errors)


def test_disk_space_error_keeps_its_os_error_fields():
    error = files.DiskSpaceError(errno.ENOSPC, "not enough disk space for x in /w", "/w/x")
    assert error.errno == errno.ENOSPC and error.filename == "/w/x"
    assert str(error) == "not enough disk space for x in /w"


def test_bad_eval_values_are_config_errors():
    with pytest.raises(errors.ConfigError, match=r"config\.eval\.normalization_quantile"):
        normalization.fit(np.zeros(4), np.ones(4), quantile=1.5)
    with pytest.raises(errors.ConfigError, match=r"config\.eval\.score_filter_size"):
        evaluation_config.resolve_score_filter_size(8, 512)
    with pytest.raises(errors.ConfigError, match=r"config\.eval\.predict\.stride=600"):
        evaluation_config.resolve_stride(600, 0.5, 512)
    with pytest.raises(errors.ConfigError, match=r"config\.eval\.predict\.overlap"):
        evaluation_config.resolve_stride(0, 1.0, 512)


def test_bad_data_values_are_config_errors():
    config = data_config_lib.defaults()
    config.channels = 2
    with pytest.raises(errors.ConfigError, match=r"config\.data\.channels must be 1 or 3"):
        validate.validate_splits(ml_collections.ConfigDict({"tfds_dir": ""}), config)
    with pytest.raises(errors.ConfigError, match=r"simulated\.difficulty"):
        simulate.SimulationParams(difficulty="medium")
    with pytest.raises(errors.ConfigError, match="unknown simulation parameters"):
        hidden_art_simulate.SimulationParams.from_config({"no_such_knob": 1})
    with pytest.raises(errors.ConfigError, match=r"config\.synthesis\.blend='no_such_blend' is not one of"):
        synthesize.SynthesisSpec(channels=1, blend="no_such_blend")


def test_bad_detector_and_backbone_values_are_config_errors():
    config = tiny.get_config("padim")
    config.model.accumulate = "no_such_mode"
    with pytest.raises(errors.ConfigError, match=r"config\.model\.accumulate='no_such_mode'"):
        detectors.build(config)
    config.detector = "no_such_detector"
    with pytest.raises(errors.ConfigError, match=r"config\.detector"):
        detectors.build(config)
    section = backbones.defaults()
    section.grey = "no_such_mode"
    with pytest.raises(errors.ConfigError, match=r"config\.backbone\.grey"):
        backbones.build(section, 1)
