"""Detector.pretrained: the loop fills pretrained parts in on the host before a run from scratch;
init stays pure (eval_shape works without any file) and a restore never calls it."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from configs import tiny
from xray_flax import detectors, parallel, steps


def _with_pretrained(calls):
    detector = detectors.build(tiny.get_config("highpass"))

    def pretrained(variables):
        calls.append(jax.tree.map(np.shape, variables))
        assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(variables))  # host arrays
        stats = {"mean": np.float32(5.0), "std": np.float32(2.0)}
        return {**variables, "statistics": stats}

    return dataclasses.replace(detector, pretrained=pretrained)


def test_init_variables_applies_pretrained_on_the_host_once():
    calls = []
    detector = _with_pretrained(calls)
    mesh = parallel.make_mesh(tiny.get_config("highpass").mesh)
    variables = steps.init_variables(detector, jax.random.key(0), 32, 1, mesh)
    assert len(calls) == 1
    assert float(variables["statistics"]["mean"]) == 5.0 and float(variables["statistics"]["std"]) == 2.0
    assert variables["statistics"]["mean"].sharding.is_fully_replicated


def test_pretrained_false_and_abstract_variables_do_not_call_it():
    calls = []
    detector = _with_pretrained(calls)
    mesh = parallel.make_mesh(tiny.get_config("highpass").mesh)
    variables = steps.init_variables(detector, jax.random.key(0), 32, 1, mesh, pretrained=False)
    assert float(variables["statistics"]["mean"]) == 0.0
    detector.abstract_variables(32, 1)  # the restore target
    assert calls == []
