"""Finding the state dict in a checkpoint's object tree, and checking it against a model."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from xray_flax.weights.errors import WeightsError
from xray_flax.weights.torch_pickle import TensorRef

# A training checkpoint often wraps the state dict: {"state_dict": ..., "epoch": ...} (Lightning,
# many research repos), {"model": ...} (torchvision's reference scripts, timm's train.py) or
# {"module": ...} (DeepSpeed). [ours: the names seen in public checkpoints]
WRAPPER_KEYS = ("state_dict", "model", "module")
_SHOW = 5  # keys listed per kind of problem in a message


def _is_state(obj, leaf: type) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, leaf) for k, v in obj.items())


def select_state(tree, path: str, leaf: type = TensorRef) -> dict:
    """The dict of tensors in `tree`: `tree` itself, or the one under a `WRAPPER_KEYS` key.

    `tree` is used when it is a dict whose values are all tensors. Otherwise exactly one of its
    entries "state_dict", "model", "module" must be such a dict, and that is used; anything
    else is a WeightsError that lists what the file holds.
    """
    if _is_state(tree, leaf):
        return dict(tree)
    if not isinstance(tree, dict):
        raise WeightsError(f"weights file {path}: holds a {type(tree).__name__}, not a dict of tensors (a state dict)")
    nested = [k for k in WRAPPER_KEYS if k in tree and _is_state(tree[k], leaf) and tree[k]]
    if len(nested) == 1:
        return dict(tree[nested[0]])
    others = [k for k, v in tree.items() if not isinstance(v, leaf)]
    listing = ", ".join(f"{k!r} ({type(tree[k]).__name__})" for k in others[:_SHOW])
    raise WeightsError(
        f"weights file {path}: not a state dict: {len(others)} of its {len(tree)} entries are not tensors ({listing}"
        f"{', ...' if len(others) > _SHOW else ''}), and "
        + (
            f"several of {WRAPPER_KEYS} hold state dicts ({nested})"
            if nested
            else f"none of {WRAPPER_KEYS} holds a dict of tensors"
        )
    )


def strip_module_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop "module." (torch.nn.DataParallel / DistributedDataParallel) when every key has it."""
    prefix = "module."
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def check_state_dict(
    state: dict[str, np.ndarray],
    expected: dict[str, tuple[int, ...]],
    path: str | os.PathLike,
    *,
    ignore: Callable[[str], bool] = lambda key: False,
) -> None:
    """Raise one WeightsError naming `path` if `state`'s keys or shapes differ from `expected`.

    Keys for which `ignore(key)` is true are skipped on both sides (e.g. BatchNorm's
    num_batches_tracked, or a classifier the backbone does not use). The message gives the
    counts of missing, unexpected and mis-shaped keys and the first few of each.
    """
    path = os.fspath(path)
    have = {k: tuple(np.shape(v)) for k, v in state.items() if not ignore(k)}
    want = {k: tuple(int(n) for n in s) for k, s in expected.items() if not ignore(k)}
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shaped = [f"{k} (file {have[k]}, model {want[k]})" for k in want if k in have and have[k] != want[k]]
    if not (missing or extra or shaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)}: {_listing(missing)}")
    if extra:
        parts.append(f"{len(extra)} unexpected key{'s' * (len(extra) != 1)}: {_listing(extra)}")
    if shaped:
        parts.append(f"{len(shaped)} mis-shaped key{'s' * (len(shaped) != 1)}: {_listing(shaped)}")
    raise WeightsError(f"weights file {path} does not fit the model: " + "; ".join(parts))


def assert_finite(state: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Raise a WeightsError naming the first floating-point tensor with a NaN or an infinity."""
    for key, value in state.items():
        value = np.asarray(value)
        if value.dtype.name == "bfloat16":
            value = value.astype(np.float32)  # exact; numpy's isfinite may not know ml_dtypes' type
        if value.dtype.kind == "f":
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise WeightsError(
                    f"weights file {os.fspath(path)}: tensor {key!r} {value.shape} has {bad} NaN or infinite values"
                )
