"""Exact k-nearest-neighbour search of query features in a memory bank, blocked and shardable.

    nearest_neighbours(queries, bank, valid, k)                 -> (distances [Q, k], indices [Q, k])
    sharded_nearest_neighbours(queries, bank, valid, k, mesh)   the same, the bank split over a mesh axis

Euclidean distances, ascending; ties go to the lower bank index (np.argsort(kind='stable')'s
rule). Entries with ``valid`` False are never returned while k valid ones exist (else their
distance is +inf). Memory-bank detectors (PatchCore) call these with banks far larger than
what one [queries x bank] distance matrix could hold, so the search never forms it:

* Blocked [ours]: queries in blocks of ``query_block`` (lax.map), the bank in blocks of
  ``bank_block`` (lax.scan) with a running top-k, so the live distance matrix is
  [query_block, bank_block] whatever the sizes (anomalib chunks only the queries, 1024 at a
  time, against the whole bank).
* The ranking uses |q|^2 - 2 q.b + |b|^2 (one matrix product per block, as anomalib's
  euclidean_dist); the distances returned are then recomputed exactly as |q - b| for the k
  winners, which removes the cancellation error of that formula for near neighbours (the
  normal patches, whose distances are small next to the norms).
* Sharded [ours]: the bank is split along a mesh axis (jax.shard_map); every device ranks its
  shard for all queries, the per-device top-k are gathered and merged. Each shard is padded to
  whole bank blocks, so every distance is computed by the same-shaped block product as on one
  device (when bank_block <= M / devices) and the result is identical, not merely close
  (tests/test_knn_coreset.py checks 1 and 4 simulated devices against NumPy brute force).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

Precision = jax.lax.Precision


def _pad_rows(x: jax.Array, rows: int, value) -> jax.Array:
    extra = rows - x.shape[0]
    if extra == 0:
        return x
    pad = [(0, extra)] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad, constant_values=value)


def _check(queries, bank, valid, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(queries as float32, bank, valid as bool) as jax arrays, after checking shapes."""
    queries, bank = jnp.asarray(queries, jnp.float32), jnp.asarray(bank)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"kNN needs queries [Q, D] and a bank [M, D], got {queries.shape} and {bank.shape}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"kNN: k={k} must be between 1 and the bank size {bank.shape[0]}")
    if valid is None:
        return queries, bank, jnp.ones((bank.shape[0],), bool)
    valid = jnp.asarray(valid)
    if valid.shape != (bank.shape[0],):
        raise ValueError(f"kNN: valid must be [{bank.shape[0]}], got {valid.shape}")
    return queries, bank, valid.astype(bool)


def _merge_top_k(keys: jax.Array, indices: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k smallest keys of [Q, n] (ties: the earlier column, which holds the lower bank
    index everywhere this is called) and their indices."""
    if k == 1:
        pos = jnp.argmin(keys, axis=1)[:, None]
    else:
        pos = jax.lax.top_k(-keys, k)[1]
    return jnp.take_along_axis(keys, pos, axis=1), jnp.take_along_axis(indices, pos, axis=1)


def _rank_block(queries, bank, valid, k, bank_block, precision):
    """(squared-distance keys [q, k], indices [q, k]) of one query block against the whole
    (block-padded) bank: a scan over bank blocks with a running top-k."""
    q_sq = jnp.sum(queries * queries, axis=1, keepdims=True)
    blocks = bank.shape[0] // bank_block
    bank_b = bank.reshape(blocks, bank_block, bank.shape[1])
    valid_b = valid.reshape(blocks, bank_block)

    def step(carry, block):
        best, best_i = carry
        b, v, start = block
        b = b.astype(jnp.float32)  # a narrower stored bank is widened one block at a time
        cross = jnp.dot(queries, b.T, precision=precision, preferred_element_type=jnp.float32)
        keys = jnp.maximum(q_sq - 2.0 * cross + jnp.sum(b * b, axis=1)[None, :], 0.0)
        keys = jnp.where(v[None, :], keys, jnp.inf)
        ids = jnp.broadcast_to(start + jnp.arange(bank_block, dtype=jnp.int32)[None, :], keys.shape)
        # Running results first: on equal keys the lower bank index (seen earlier) wins.
        merged = _merge_top_k(jnp.concatenate([best, keys], 1), jnp.concatenate([best_i, ids], 1), k)
        return merged, None

    init = (
        jnp.full((queries.shape[0], k), jnp.inf, jnp.float32),
        jnp.full((queries.shape[0], k), bank.shape[0], jnp.int32),
    )
    starts = jnp.arange(blocks, dtype=jnp.int32) * bank_block
    (keys, indices), _ = jax.lax.scan(step, init, (bank_b, valid_b, starts))
    return keys, indices


def _exact_distances(queries, bank, indices, keys):
    """|q - b| for the selected indices, +inf where nothing valid was found."""
    safe = jnp.clip(indices, 0, bank.shape[0] - 1)
    diff = queries[:, None, :] - bank[safe].astype(jnp.float32)
    distances = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    return jnp.where(jnp.isfinite(keys), distances, jnp.inf)


def _local_search(queries, bank, valid, k, query_block, bank_block, precision):
    """(keys, exact distances, indices) [Q, k] of every query; bank rows already a multiple
    of bank_block."""
    n_queries = queries.shape[0]
    query_block = max(1, min(query_block, n_queries))
    padded = _pad_rows(queries, math.ceil(n_queries / query_block) * query_block, 0.0)
    blocks = padded.reshape(-1, query_block, queries.shape[1])

    def one(q):
        keys, indices = _rank_block(q, bank, valid, k, bank_block, precision)
        return keys, _exact_distances(q, bank, indices, keys), indices

    keys, distances, indices = jax.lax.map(one, blocks)
    unblock = lambda x: x.reshape(-1, k)[:n_queries]  # noqa: E731
    return unblock(keys), unblock(distances), unblock(indices)


def _block_size(bank_rows: int, bank_block: int) -> int:
    return max(1, min(int(bank_block), bank_rows))


def nearest_neighbours(
    queries: jax.Array,
    bank: jax.Array,
    valid: jax.Array | None = None,
    k: int = 1,
    *,
    query_block: int = 1024,
    bank_block: int = 4096,
    precision: Precision = Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    """The k nearest valid bank entries of every query: (Euclidean distances [Q, k] ascending,
    bank indices [Q, k] int32). The bank may be stored in a narrower dtype (bfloat16): each
    block is widened to float32 when it is compared, so no float32 copy of the bank is made. A
    bank whose size is not a multiple of ``bank_block`` is padded (a copy: choose sizes that
    divide to avoid it for large banks)."""
    queries, bank, valid = _check(queries, bank, valid, k)
    block = _block_size(bank.shape[0], bank_block)
    rows = math.ceil(bank.shape[0] / block) * block
    bank_p = _pad_rows(bank, rows, 0)
    valid_p = _pad_rows(valid, rows, False)
    _, distances, indices = _local_search(queries, bank_p, valid_p, k, query_block, block, precision)
    return distances, indices


def sharded_nearest_neighbours(
    queries: jax.Array,
    bank: jax.Array,
    valid: jax.Array | None = None,
    k: int = 1,
    *,
    mesh: Mesh,
    axis: str = "data",
    query_block: int = 1024,
    bank_block: int = 4096,
    precision: Precision = Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    """`nearest_neighbours` with the bank split into equal shards along ``mesh`` axis ``axis``.

    Each device searches its shard for all queries (the queries are replicated to every
    device: total work equals one device's, spread over n) and the n per-shard top-k are
    merged; the result is replicated. The bank is padded with invalid rows to n whole shards
    of whole blocks (shard size = ceil(M / n / block) * block). When ``bank_block`` <= M / n
    the blocks are those of a one-device search with the same ``bank_block``, every distance
    comes from the same-shaped product, and the answer equals it bit for bit."""
    queries, bank, valid = _check(queries, bank, valid, k)
    n = int(mesh.shape[axis])
    block = _block_size(math.ceil(bank.shape[0] / n), bank_block)
    shard = math.ceil(bank.shape[0] / n / block) * block
    if shard < k:
        raise ValueError(f"kNN: k={k} exceeds the per-device bank shard of {shard} rows")
    bank_p = _pad_rows(bank, shard * n, 0)
    valid_p = _pad_rows(valid, shard * n, False)

    def local(q, b, v):
        keys, distances, indices = _local_search(q, b, v, k, query_block, block, precision)
        indices = indices + jax.lax.axis_index(axis).astype(jnp.int32) * shard
        # [n, Q, k] -> [Q, n * k] in shard order: equal keys keep the lower bank index first.
        gather = lambda x: jnp.moveaxis(jax.lax.all_gather(x, axis), 0, 1).reshape(x.shape[0], n * k)  # noqa: E731
        keys, distances, indices = gather(keys), gather(distances), gather(indices)
        pos = jnp.argmin(keys, axis=1)[:, None] if k == 1 else jax.lax.top_k(-keys, k)[1]
        take = functools.partial(jnp.take_along_axis, indices=pos, axis=1)
        return take(distances), take(indices)

    spec = PartitionSpec(axis)
    search = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), spec, spec), out_specs=PartitionSpec(), check_vma=False
    )
    return search(queries, bank_p, valid_p)


def brute_force(queries, bank, valid=None, k: int = 1):
    """NumPy float64 reference: every distance, stable sort (tests and benchmarks)."""
    q = np.asarray(queries, np.float64)
    b = np.asarray(bank, np.float64)
    d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if valid is not None:
        d = np.where(np.asarray(valid, bool)[None, :], d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order
