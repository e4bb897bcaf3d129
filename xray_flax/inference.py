"""Batched, mesh-sharded anomaly maps of any detector, for validation, evaluation and predict.

One `Inferencer` compiles the detector's `anomaly_map` once for a fixed global batch size and
pads smaller batches up to it, so a run never recompiles for the last partial batch. The
score normalisation (xray_flax/normalization.py) is applied on the device, before the image
score, so every consumer sees normalised maps; its shift and scale are arguments of the
compiled function, so a new normalisation (or new weights) needs no recompilation.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from xray_flax import metrics, parallel
from xray_flax.detectors import Detector
from xray_flax.normalization import IDENTITY, ScoreNormalization


def to_host(x: jax.Array) -> np.ndarray:
    """Fetch a (possibly multi-host) global array to every process as NumPy."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def normalised_outputs(detector: Detector, score_filter_size: int, score_top_k: int = 1):
    """The pure function every consumer of maps runs (evaluation, predict, the exported model):
    (variables, [shift, scale], images [b, H, W, C]) -> {'map' [b, H, W] normalised, 'score' [b],
    and the detector's extras}."""

    def outputs(variables, shift_scale, images):
        out = dict(detector.anomaly_map(variables, images))
        shift, scale = shift_scale[0], shift_scale[1]
        out["map"] = (out["map"].astype(jnp.float32) - shift) * scale
        if "score" in out:
            out["score"] = (out["score"].astype(jnp.float32) - shift) * scale
        else:
            out["score"] = metrics.image_scores(out["map"], score_filter_size, score_top_k)
        return out

    return outputs


class Inferencer:
    def __init__(
        self,
        detector: Detector,
        variables: Any,
        mesh: jax.sharding.Mesh,
        batch_size: int,
        score_filter_size: int,
        normalization: ScoreNormalization = IDENTITY,
        score_top_k: int = 1,
    ):
        devices = mesh.devices.size
        self.batch_size = -(-batch_size // devices) * devices
        self.mesh = mesh
        self._sharding = parallel.batch_sharded(mesh)
        self.set_variables(variables, normalization)
        replicated = parallel.replicated(mesh)
        outputs = normalised_outputs(detector, score_filter_size, score_top_k)
        self._infer = jax.jit(outputs, in_shardings=(replicated, replicated, self._sharding))
        self._maps = jax.jit(
            lambda v, n, x: outputs(v, n, x)["map"], in_shardings=(replicated, replicated, self._sharding)
        )

    def set_variables(self, variables: Any, normalization: ScoreNormalization = IDENTITY) -> None:
        """Swap in new weights (same shapes) and normalisation without recompiling."""
        self.variables = parallel.replicate(variables, self.mesh)
        self.normalization = normalization
        self._shift_scale = parallel.replicate(
            jnp.asarray([normalization.shift, normalization.scale], jnp.float32), self.mesh
        )

    def _device_batch(self, images: np.ndarray) -> tuple[jax.Array, int]:
        n = images.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} images exceeds the inference batch size {self.batch_size}")
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n,) + images.shape[1:], images.dtype)
            images = np.concatenate([images, pad])
        images = np.ascontiguousarray(images, np.float32)
        # Every process holds the same host batch; each device takes its slice of it.
        array = jax.make_array_from_callback(images.shape, self._sharding, lambda index: images[index])
        return array, n

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [b, H, W, C] -> {'map' [b, H, W], 'score' [b], and the detector's extras}."""
        array, n = self._device_batch(images)
        out = self._infer(self.variables, self._shift_scale, array)
        return {k: to_host(v)[:n] for k, v in out.items()}

    def anomaly_maps(self, images: np.ndarray) -> jax.Array | np.ndarray:
        """Maps only, [b, H, W]; on one process left on the device so the caller can overlap
        reading the next tiles with this computation (np.asarray waits for it)."""
        array, n = self._device_batch(images)
        maps = self._maps(self.variables, self._shift_scale, array)
        return to_host(maps)[:n] if jax.process_count() > 1 else maps[:n]

    def seconds_per_patch(self, images: np.ndarray, batches: int, warmup: int) -> dict:
        """Warm inference time per patch: median over `batches` timed calls of a full batch."""
        array, _ = self._device_batch(images[: self.batch_size])
        call = lambda: jax.block_until_ready(self._infer(self.variables, self._shift_scale, array))  # noqa: E731
        for _ in range(max(1, warmup)):
            call()
        times = []
        for _ in range(batches):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        return {
            "seconds_per_patch": median / self.batch_size,
            "batch_size": self.batch_size,
            "timed_batches": batches,
            "median_seconds_per_batch": median,
            "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "includes": "anomaly map + image score on device; excludes reading and tiling",
        }
