"""Batched, mesh-sharded anomaly maps for evaluation and whole-scan prediction.

One `Inferencer` compiles the model's inference step once for a fixed global batch size and
pads smaller batches up to it, so a run never recompiles for the last partial batch.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from xray_flax import metrics, parallel, steps


def to_host(x: jax.Array) -> np.ndarray:
    """Fetch a (possibly multi-host) global array to every process as NumPy."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class Inferencer:
    def __init__(
        self, model: nn.Module, variables: Any, mesh: jax.sharding.Mesh, batch_size: int, score_filter_size: int
    ):
        devices = mesh.devices.size
        self.batch_size = -(-batch_size // devices) * devices
        self.mesh = mesh
        self.variables = parallel.replicate(variables, mesh)
        self._sharding = parallel.batch_sharded(mesh)

        def infer(variables, images):
            maps, reconstruction = steps.predict_step(variables, images, model=model)
            return maps, metrics.image_scores(maps, score_filter_size), reconstruction

        self._infer = jax.jit(
            infer, in_shardings=(parallel.replicated(mesh), self._sharding), out_shardings=(self._sharding,) * 3
        )
        self._maps = jax.jit(
            lambda v, x: steps.predict_step(v, x, model=model)[0],
            in_shardings=(parallel.replicated(mesh), self._sharding),
            out_shardings=self._sharding,
        )

    def set_variables(self, variables: Any) -> None:
        """Swap in new weights (same shapes) without recompiling, e.g. during training."""
        self.variables = parallel.replicate(variables, self.mesh)

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

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images [b, H, W, C] -> (maps [b, H, W], image scores [b], reconstructions [b, H, W, C])."""
        array, n = self._device_batch(images)
        maps, scores, reconstruction = self._infer(self.variables, array)
        return to_host(maps)[:n], to_host(scores)[:n], to_host(reconstruction)[:n]

    def anomaly_maps(self, images: np.ndarray) -> jax.Array | np.ndarray:
        """Maps only, [b, H, W]; on one process left on the device so the caller can overlap
        reading the next tiles with this computation (np.asarray waits for it)."""
        array, n = self._device_batch(images)
        maps = self._maps(self.variables, array)
        return to_host(maps)[:n] if jax.process_count() > 1 else maps[:n]

    def seconds_per_patch(self, images: np.ndarray, batches: int, warmup: int) -> dict:
        """Warm inference time per patch: median over `batches` timed calls of a full batch."""
        array, _ = self._device_batch(images[: self.batch_size])
        for _ in range(max(1, warmup)):
            jax.block_until_ready(self._infer(self.variables, array))
        times = []
        for _ in range(batches):
            start = time.perf_counter()
            jax.block_until_ready(self._infer(self.variables, array))
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


def state_variables(state: Any) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}
