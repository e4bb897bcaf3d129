"""synthesize_batch: interface, determinism, blend, mask/has_anomaly agreement."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_flax import anomaly
from xray_flax.anomaly import synthesize

SIZE = 64


def _images(batch, channels, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, SIZE, SIZE, channels))


def _spec(channels=1, **overrides):
  cfg = anomaly.defaults()
  spec = anomaly.SynthesisSpec.from_config(cfg, channels)
  return dataclasses.replace(spec, **overrides)


def _check_outputs(out, images):
  b, h, w, c = images.shape
  assert out['image'].shape == (b, h, w, c)
  assert out['mask'].shape == (b, h, w, 1)
  assert out['has_anomaly'].shape == (b,)
  for v in out.values():
    assert v.dtype == jnp.float32
  image, mask, has = (np.asarray(out[k]) for k in ('image', 'mask',
                                                   'has_anomaly'))
  assert image.min() >= 0.0 and image.max() <= 1.0
  assert set(np.unique(mask)) <= {0.0, 1.0}
  assert set(np.unique(has)) <= {0.0, 1.0}
  # mask and has_anomaly agree, and outside the mask nothing changed
  np.testing.assert_array_equal(mask.reshape(b, -1).max(axis=1), has)
  np.testing.assert_allclose(image * (1 - mask), np.asarray(images) *
                             (1 - mask), atol=1e-6)


@pytest.mark.parametrize('batch', [1, 16])
@pytest.mark.parametrize('channels', [1, 3])
def test_shapes_ranges_and_agreement(batch, channels):
  images = _images(batch, channels)
  cfg = anomaly.defaults()
  spec = anomaly.SynthesisSpec.from_config(cfg, channels)
  bank = anomaly.load_texture_bank(cfg, SIZE, channels)
  out = anomaly.synthesize_batch(jax.random.key(1), images, bank, spec)
  _check_outputs(out, images)


def test_deterministic_under_fixed_key_and_key_matters():
  images = _images(8, 1)
  spec = _spec()
  bank = np.zeros((1, SIZE, SIZE, 1), np.float32)
  a = anomaly.synthesize_batch(jax.random.key(5), images, bank, spec)
  b = anomaly.synthesize_batch(jax.random.key(5), images, bank, spec)
  c = anomaly.synthesize_batch(jax.random.key(6), images, bank, spec)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert not np.array_equal(np.asarray(a['mask']), np.asarray(c['mask']))


def test_spec_is_hashable_static_argument():
  spec = _spec()
  assert hash(spec) == hash(anomaly.SynthesisSpec.from_config(
      anomaly.defaults(), 1))
  step = jax.jit(lambda k, x, t, s: anomaly.synthesize_batch(k, x, t, s),
                 static_argnums=3)
  out = step(jax.random.key(0), _images(2, 1), jnp.zeros((1, SIZE, SIZE, 1)),
             spec)
  assert out['image'].shape == (2, SIZE, SIZE, 1)


def test_anomaly_probability_extremes():
  images = _images(16, 1)
  bank = np.zeros((1, SIZE, SIZE, 1), np.float32)
  none = anomaly.synthesize_batch(jax.random.key(0), images, bank,
                                  _spec(anomaly_probability=0.0))
  np.testing.assert_array_equal(np.asarray(none['image']), np.asarray(images))
  assert float(none['mask'].sum()) == 0 and float(none['has_anomaly'].sum()) == 0
  every = anomaly.synthesize_batch(jax.random.key(0), images, bank,
                                   _spec(anomaly_probability=1.0))
  # With p=1 only empty Perlin masks give has_anomaly=0; most are non-empty.
  assert float(every['has_anomaly'].mean()) >= 0.5
  _check_outputs(every, images)
