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
paper's data, docs/papers.md, "PatchCore and PaDiM"). Start point: anomalib draws it at random, here it is the
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

**Absorption** (``stream_add(absorb=True)``) [ours, from Charikar et al.'s merge rule]: after the
first reduction, a new feature within the certificate (max rho) of its nearest bank entry is
absorbed by that entry (its rho rises to at most the certificate) and never enters the buffer.
The certificate does not grow from it, and on data that repeat themselves (the textures of one
painting) most features are absorbed, so the greedy reductions, m passes over the m + C pool
each, become rare; what is paid instead is one blocked nearest-neighbour search of each
batch in the bank (a matrix product, xray_flax.nn.knn).

Distances are Euclidean on the projected features when a projection is given (PatchCore's
random projection [paper: dense 128-d; anomalib: sparse, eps 0.9]; here a dense Gaussian
N(0, 1/out_dim) matrix, Johnson-Lindenstrauss), so radii and certificates are in that space.
"""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import numpy as np

from xray_flax.nn import knn


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
        "absorbed": np.zeros((), np.int32),  # valid features absorbed by a bank entry (never buffered)
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


def _absorb(state: dict, features: jax.Array, valid: jax.Array, projection, query_block: int, bank_block: int):
    """(valid features not absorbed, the state with the absorbing entries' radii raised).

    A feature whose projected distance to its nearest bank entry is at most the current
    certificate (``coverage_bound``, the largest covering radius) joins that entry: the entry's
    radius becomes max(rho, distance) <= the certificate, so the certificate does not grow, and
    the feature never enters the buffer. This is the merge rule of Charikar et al.'s doubling
    algorithm (STOC 1997: a new point within the current radius of a centre is absorbed by it).
    Before the first reduction the bank is empty and nothing is absorbed."""
    bank = _project(jnp.asarray(state["bank"]), projection)
    distances, indices = knn.nearest_neighbours(
        _project(features.astype(jnp.float32), projection),
        bank,
        jnp.asarray(state["bank_valid"]),
        1,
        query_block=query_block,
        bank_block=bank_block,
    )
    distance, nearest = distances[:, 0], indices[:, 0]
    bound = jnp.asarray(state["coverage_bound"])
    absorbed = valid & (jnp.asarray(state["reductions"]) > 0) & (distance <= bound)
    bank_size = state["bank"].shape[0]
    reach = jnp.where(absorbed, distance, 0.0)
    raised = jax.ops.segment_max(reach, jnp.where(absorbed, nearest, bank_size), num_segments=bank_size + 1)
    radius = jnp.maximum(jnp.asarray(state["bank_radius"]), raised[:bank_size])
    state = {
        **state,
        "bank_radius": radius,
        "absorbed": jnp.asarray(state["absorbed"]) + jnp.sum(absorbed.astype(jnp.int32)),
    }
    return valid & ~absorbed, state


def stream_add(
    state: dict,
    features: jax.Array,
    valid: jax.Array,
    projection: jax.Array | None = None,
    *,
    absorb: bool = False,
    query_block: int = 1024,
    bank_block: int = 4096,
) -> dict:
    """Appends the valid rows of [n, dim] ``features`` (``valid`` [n]) to the buffer, first
    reducing bank + buffer when they would not fit (so a full buffer waits for the next call or
    `stream_finish`). The buffer size must be a multiple of n (checked), so without absorption a
    full buffer is always exactly full. With ``absorb`` (static), valid
    features already within the certificate of a bank entry are absorbed by it instead
    (`_absorb`; one blocked nearest-neighbour search of the n features in the bank), so only
    features the bank does not yet cover fill the buffer and reductions become rarer. Pure:
    returns a new state."""
    n = features.shape[0]
    chunk = state["buffer"].shape[0]
    if chunk % n:
        raise ValueError(f"coreset: the buffer of {chunk} features is not a multiple of the {n} added per call")
    state = jax.tree.map(jnp.asarray, state)
    valid = jnp.asarray(valid).astype(bool)
    seen = state["seen"] + jnp.sum(valid.astype(jnp.int32))
    if absorb:
        valid, state = _absorb(state, features, valid, projection, query_block, bank_block)
    # A reduction only when the kept rows would not fit (with absorption most batches add few).
    kept = jnp.sum(valid.astype(jnp.int32))
    state = jax.lax.cond(state["fill"] + kept > chunk, lambda s: stream_reduce(s, projection), lambda s: s, state)
    # The kept rows go to the next free buffer slots, in order (others to slot `chunk`: dropped).
    fill = state["fill"]
    slots = jnp.where(valid, fill + jnp.cumsum(valid.astype(jnp.int32)) - 1, chunk)
    state = {
        **state,
        "buffer": state["buffer"].at[slots].set(features.astype(jnp.float32), mode="drop"),
        "buffer_valid": state["buffer_valid"].at[slots].set(True, mode="drop"),
        "fill": fill + kept,
        "seen": seen,
    }
    return state


def stream_finish(state: dict, projection: jax.Array | None = None) -> dict:
    """The last reduction (when the buffer holds anything): the final bank."""
    state = jax.tree.map(jnp.asarray, state)
    return jax.lax.cond(state["fill"] > 0, lambda s: stream_reduce(s, projection), lambda s: s, state)
