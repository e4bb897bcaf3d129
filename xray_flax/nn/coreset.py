"""Greedy k-centre coresets (PatchCore's memory-bank subsampling), exact and in bounded memory.

    greedy_k_center(points, m, valid, radius)   Gonzalez's farthest-first traversal (jit, static shapes)
    greedy_k_center_reference(points, m, valid) the same in plain NumPy float64 (tests)
    projection_matrix(seed, dim, out_dim)       the Johnson-Lindenstrauss projection of the distances
    stream_init / stream_add / stream_finish    the bounded-memory coreset over a stream of chunks
    coverage_radius(points, centres)            max distance of any point to its nearest centre

**Exact** [paper, anomalib]: PatchCore keeps m of the N training patch features chosen by the
greedy k-centre rule (Gonzalez 1985; Sener & Savarese 2018 as PatchCore cites): start from one
point, then repeatedly add the point farthest from the chosen ones. Its coverage radius (the
largest distance of any feature to its nearest chosen one) is at most twice the optimum. It
needs all N features at once: anomalib stacks them (N x 1536 x 4 bytes; ~300 GB for the
paper's data, REFERENCE.md section 7). Start point: anomalib draws it at random, here it is the
first valid point (deterministic, no key) [ours].

**Bounded memory** [ours, from published parts]: a chain of merge-and-reduce steps (the
composable-coreset construction: Gonzalez on each part, then Gonzalez on the union of the
parts' centres, Indyk, Mahabadi, Mahdian & Mirrokni, PODS 2014; Malkomes et al., NeurIPS 2015,
prove that two-round form a 4-approximation). The state holds the bank (m features) and a
buffer of C features; when the buffer is full, greedy k-centre selects m new bank entries from
bank + buffer, and the buffer empties. Memory is (m + C) features whatever N. Applied as a
chain the worst-case factor is not constant (each reduction can add its own radius), so two
things keep it honest: (1) every bank entry carries a *covering radius* rho, a bound on the
distance from it to every training feature it stands for (the bookkeeping of Charikar,
Chekuri, Feder & Motwani's doubling algorithm, STOC 1997, whose merged centres likewise bound
the distance to the points they absorbed): a fresh feature has rho = 0, and after a
reduction rho'(c) = max over pool points p assigned to c of |p - c| + rho(p) (triangle
inequality); (2) the greedy selection ranks pool points by |p - C| + rho(p), so an entry that
already stands for a far-away group is kept rather than merged into a neighbour. max rho is then
a certified bound on the coverage radius of the final bank over every feature ever seen
(tests check it, and measure the true coverage against the exact coreset's:
tests/test_knn_coreset.py, docs/performance.md). With C >= N there is one reduction, all rho
are 0, and the result is exactly the greedy k-centre coreset.

Distances are Euclidean on the projected features when a projection is given (PatchCore's
random projection [paper: dense 128-d; anomalib: sparse, eps 0.9]; here a dense Gaussian
N(0, 1/out_dim) matrix, Johnson-Lindenstrauss), so radii and certificates are in that space.
"""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import numpy as np


class Greedy(typing.NamedTuple):
    indices: jax.Array  # [m] int32 pool indices, in selection order
    valid: jax.Array  # [m] bool: False where the pool had fewer than m valid points
    radius: jax.Array  # [m] float32 covering radius of each selected point (0 where invalid)
    coverage: jax.Array  # scalar: max over valid pool points of |p - nearest centre| + rho(p)
    separation: jax.Array  # scalar: the largest plain distance of an unselected point (0 if none)


def projection_matrix(seed: int, dim: int, out_dim: int) -> np.ndarray | None:
    """[dim, out_dim] float32 Gaussian N(0, 1/out_dim) (so squared norms are kept in
    expectation), or None when out_dim is 0 or >= dim (projecting would not shrink). [ours;
    paper: a random linear projection]"""
    if out_dim <= 0 or out_dim >= dim:
        return None
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def greedy_k_center(
    points: jax.Array, m: int, valid: jax.Array | None = None, radius: jax.Array | None = None
) -> Greedy:
    """Farthest-first traversal: m points of ``points`` [P, d].

    The first is the valid point of largest ``radius`` (the first valid point when all are 0);
    each next one the unselected valid point p maximising |p - C| + radius(p), with C the
    points chosen so far (ties: the lowest index). With ``radius`` None (all 0) this is plain
    greedy k-centre (Gonzalez 1985). O(m P d) work, O(P) memory besides the points."""
    points = jnp.asarray(points, jnp.float32)
    n_points = points.shape[0]
    valid = jnp.ones((n_points,), bool) if valid is None else jnp.asarray(valid, bool)
    radius = jnp.zeros((n_points,), jnp.float32) if radius is None else jnp.asarray(radius, jnp.float32)
    neg_inf = jnp.float32(-jnp.inf)

    first_score = jnp.where(valid, radius, neg_inf)
    first = jnp.argmax(first_score).astype(jnp.int32)
    selected = jnp.zeros((m + 1,), jnp.int32).at[0].set(first)
    selected_valid = jnp.zeros((m + 1,), bool).at[0].set(jnp.isfinite(first_score[first]))

    def body(i, carry):
        selected, selected_valid, taken, min_d, slot = carry
        centre, ok = selected[i], selected_valid[i]
        diff = points - points[centre]
        d = jnp.sqrt(jnp.sum(diff * diff, axis=1))
        closer = ok & (d < min_d)
        min_d = jnp.where(closer, d, min_d)
        slot = jnp.where(closer, i, slot)
        taken = taken.at[centre].set(taken[centre] | ok)
        score = jnp.where(valid & ~taken, min_d + radius, neg_inf)
        nxt = jnp.argmax(score).astype(jnp.int32)
        selected = selected.at[i + 1].set(nxt)
        selected_valid = selected_valid.at[i + 1].set(jnp.isfinite(score[nxt]))
        return selected, selected_valid, taken, min_d, slot

    init = (
        selected,
        selected_valid,
        jnp.zeros((n_points,), bool),
        jnp.full((n_points,), jnp.inf, jnp.float32),
        jnp.full((n_points,), m, jnp.int32),
    )
    selected, selected_valid, taken, min_d, slot = jax.lax.fori_loop(0, m, body, init)
    selected, selected_valid = selected[:m], selected_valid[:m]
    # Covering radius of each centre over the pool points assigned to it (the nearest centre).
    reach = jnp.where(valid & jnp.isfinite(min_d), min_d + radius, neg_inf)
    seg = jnp.where(valid, slot, m)
    per_centre = jax.ops.segment_max(reach, seg, num_segments=m + 1)[:m]
    per_centre = jnp.where(selected_valid, jnp.maximum(per_centre, 0.0), 0.0)
    coverage = jnp.maximum(jnp.max(jnp.where(valid, reach, neg_inf)), 0.0)
    separation = jnp.max(jnp.where(valid & ~taken & jnp.isfinite(min_d), min_d, 0.0))
    return Greedy(selected, selected_valid, per_centre, coverage, separation)


def greedy_k_center_reference(points: np.ndarray, m: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Textbook greedy k-centre in NumPy float64: start at the first valid point, then the
    farthest unselected valid point, ties to the lowest index. Returns the m indices (fewer
    when fewer valid points exist)."""
    x = np.asarray(points, np.float64)
    valid = np.ones(len(x), bool) if valid is None else np.asarray(valid, bool)
    candidates = np.flatnonzero(valid)
    if len(candidates) == 0:
        return np.zeros((0,), np.int64)
    chosen = [int(candidates[0])]
    min_d = np.full(len(x), np.inf)
    while len(chosen) < min(m, len(candidates)):
        min_d = np.minimum(min_d, np.sqrt(((x - x[chosen[-1]]) ** 2).sum(1)))
        score = np.where(valid, min_d, -np.inf)
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return np.asarray(chosen)


def coverage_radius(points: np.ndarray, centres: np.ndarray, block: int = 4096) -> float:
    """max_p min_c |p - c| in float64 (the k-centre objective), blocked over points."""
    c = np.asarray(centres, np.float64)
    c_sq = (c * c).sum(1)
    worst = 0.0
    for start in range(0, len(points), block):
        p = np.asarray(points[start : start + block], np.float64)
        d2 = (p * p).sum(1)[:, None] - 2.0 * p @ c.T + c_sq[None, :]
        worst = max(worst, float(np.sqrt(max(d2.min(1).max(), 0.0))))
    return worst


# ------------------------------------------------------------------ bounded-memory stream


def stream_init(bank_size: int, chunk_size: int, dim: int) -> dict:
    """The empty state of a streamed coreset: m = bank_size entries, a buffer of chunk_size
    features, all float32 / bool / int32 with static shapes (an orbax-checkpointable pytree)."""
    if bank_size < 1 or chunk_size < 1:
        raise ValueError(f"coreset: bank_size={bank_size} and chunk_size={chunk_size} must be >= 1")
    return {
        "bank": np.zeros((bank_size, dim), np.float32),
        "bank_valid": np.zeros((bank_size,), bool),
        "bank_radius": np.zeros((bank_size,), np.float32),
        "buffer": np.zeros((chunk_size, dim), np.float32),
        "buffer_valid": np.zeros((chunk_size,), bool),
        "fill": np.zeros((), np.int32),  # features in the buffer
        "seen": np.zeros((), np.int32),  # valid features ever added
        "reductions": np.zeros((), np.int32),
        "coverage_bound": np.zeros((), np.float32),  # max bank radius (the certificate)
    }


def _project(x: jax.Array, projection: jax.Array | None) -> jax.Array:
    if projection is None:
        return x
    return jnp.dot(x, projection, precision=jax.lax.Precision.HIGHEST)


def stream_reduce(state: dict, projection: jax.Array | None = None) -> dict:
    """Greedy k-centre of bank + buffer (ranked by projected distance + covering radius) ->
    the new bank; the buffer empties."""
    bank_size = state["bank"].shape[0]
    pool = jnp.concatenate([jnp.asarray(state["bank"]), jnp.asarray(state["buffer"])], 0)
    pool_valid = jnp.concatenate([jnp.asarray(state["bank_valid"]), jnp.asarray(state["buffer_valid"])], 0)
    pool_radius = jnp.concatenate(
        [jnp.asarray(state["bank_radius"]), jnp.zeros(state["buffer"].shape[:1], jnp.float32)], 0
    )
    result = greedy_k_center(_project(pool, projection), bank_size, pool_valid, pool_radius)
    bank = jnp.where(result.valid[:, None], pool[result.indices], 0.0)
    return {
        **state,
        "bank": bank,
        "bank_valid": result.valid,
        "bank_radius": result.radius,
        "buffer_valid": jnp.zeros_like(jnp.asarray(state["buffer_valid"])),
        "fill": jnp.zeros((), jnp.int32),
        "reductions": jnp.asarray(state["reductions"]) + 1,
        "coverage_bound": result.coverage,
    }


def stream_add(state: dict, features: jax.Array, valid: jax.Array, projection: jax.Array | None = None) -> dict:
    """Appends [n, dim] features (``valid`` [n]: False rows are ignored) to the buffer and
    reduces when it is full. The buffer size must be a multiple of n (checked), so a full
    buffer is always exactly full. Pure: returns a new state."""
    n = features.shape[0]
    chunk = state["buffer"].shape[0]
    if chunk % n:
        raise ValueError(f"coreset: the buffer of {chunk} features is not a multiple of the {n} added per call")
    fill = jnp.asarray(state["fill"])
    buffer = jax.lax.dynamic_update_slice(jnp.asarray(state["buffer"]), features.astype(jnp.float32), (fill, 0))
    buffer_valid = jax.lax.dynamic_update_slice(jnp.asarray(state["buffer_valid"]), valid.astype(bool), (fill,))
    state = {
        **state,
        "buffer": buffer,
        "buffer_valid": buffer_valid,
        "fill": fill + n,
        "seen": jnp.asarray(state["seen"]) + jnp.sum(valid.astype(jnp.int32)),
    }
    state = jax.tree.map(jnp.asarray, state)
    return jax.lax.cond(state["fill"] >= chunk, lambda s: stream_reduce(s, projection), lambda s: s, state)


def stream_finish(state: dict, projection: jax.Array | None = None) -> dict:
    """The last reduction (when the buffer holds anything): the final bank."""
    state = jax.tree.map(jnp.asarray, state)
    return jax.lax.cond(state["fill"] > 0, lambda s: stream_reduce(s, projection), lambda s: s, state)
