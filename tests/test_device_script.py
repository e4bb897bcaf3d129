"""benchmarks/device/run_gpu.py, the one command a borrowed GPU machine runs: its dry run on this
CPU (every part present with a result or the reason it was skipped), the gpu-marked tests it
selects, and the wheel list with the 64 MiB size check (docs/performance.md, "Running on a GPU
machine")."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "device"))

import run_gpu  # noqa: E402
import wheels  # noqa: E402

ROW_KEYS = {"model", "mode", "dtype", "size", "batch", "device", "median_ms", "ms_per_image", "ratio_vs_peer"}


# The light parts in every test run: the orchestration, the environment record, the kernel check,
# the test selection, PatchCore's fit, the PyTorch parts' skip (~40 s on 2 idle cores).
LIGHT = ("env", "kernels", "pytest", "paper_peer", "draem_peer", "baseline_peer", "patchcore")


def test_dry_run_of_the_light_parts(tmp_path):
    summary, out, stdout = _dry_run(tmp_path, "--parts", ",".join(LIGHT))
    _check_parts(summary, out, selected=LIGHT)
    assert summary["table"] == []
    assert "The paper: 82.4 ms per 512-px patch." in stdout


# The whole dry run: the model parts each compile an init and a train step of a (narrowed) network,
# ~2.5 min of CPU on XLA:CPU, mostly compiling (one test: under pytest-xdist a fixture shared by two
# tests could run it once per worker).
@pytest.mark.slow
def test_dry_run_records_every_part_rows_and_the_kernel_check(tmp_path):
    summary, out, stdout = _dry_run(tmp_path)
    _check_parts(summary, out, selected=tuple(run_gpu.PARTS))
    _check_rows(summary, stdout)


def _dry_run(out, *args):
    env = {**os.environ}
    # Reruns compile nothing twice (the tests' persistent cache, tests/conftest.py).
    cache = os.environ.get("XRAY_FLAX_TEST_JAX_CACHE", os.path.join(REPO, ".pytest_cache", "jax"))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "device", "run_gpu.py"),
            "--dry-run",
            "--out",
            str(out),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "summary.json") as f:
        return json.load(f), out, proc.stdout


def _check_parts(summary, out, selected):
    assert summary["dry_run"] is True
    assert list(summary["parts"]) == list(run_gpu.PARTS)  # every part, run or not, with its record
    for name, record in summary["parts"].items():
        assert record["status"] in {"ok", "skipped"}, (name, record.get("reason"), record.get("output_tail"))
        if record["status"] == "skipped":
            assert record["reason"], name
        else:
            assert "result" in record, name
    torch_here = importlib.util.find_spec("torch") is not None  # the peers say why they did not run
    for name, (kind, _, _) in run_gpu.PARTS.items():
        record = summary["parts"][name]
        if name not in selected:
            assert record["reason"] == "not in --parts", name
        elif kind == "torch" and not torch_here:
            assert "torch is not installed" in record["reason"]
        elif kind != "torch":
            assert record["status"] == "ok", name
    assert (out / "pytest.log").exists()
    assert summary["parts"]["pytest"]["result"]["counts"]["collected"] > 0
    kernels = summary["parts"]["kernels"]["result"]
    # on XLA:CPU the CPU forms are the ones lowered; on a GPU the check asks for the native ones
    assert kernels["expected_form"] == "cpu" and kernels["all_as_expected"], kernels["checks"]
    assert len(kernels["checks"]) == 6 and not kernels["cpu_only_kernels_off"]
    patchcore = summary["parts"]["patchcore"]["result"]
    assert patchcore["tiles_per_s"] > 0 and patchcore["coreset_reductions_included"]
    env = summary["parts"]["env"]["result"]
    assert env["backend"] == "cpu" and env["versions"]["jax"]


def _check_rows(summary, stdout):
    table = summary["table"]
    assert {(r["part"], r["mode"]) for r in table} >= {("paper", "train"), ("paper", "infer"), ("draem", "infer")}
    assert {r["dtype"] for r in table if r["part"] == "paper"} == {"float32", "bfloat16"}
    for row in table:
        assert ROW_KEYS <= set(row), row
        assert row["median_ms"] > 0 and row["device"].startswith("cpu")
        assert row["ratio_vs_peer"] is None or row["ratio_vs_peer"] > 0
    assert "The paper: 82.4 ms per 512-px patch." in stdout


def test_the_gpu_test_list_holds_every_gpu_marked_test_file():
    marked = sorted(
        f"tests/{name}"
        for name in os.listdir(os.path.join(REPO, "tests"))
        if name.endswith(".py") and re.search(r"pytest\.mark\.gpu\b", open(os.path.join(REPO, "tests", name)).read())
    )
    assert marked == sorted(run_gpu.GPU_TEST_FILES)


def test_wheel_list_parses_and_the_carried_set_fits():
    groups = wheels.parse()
    assert groups["core"], "wheels.txt needs a [core] group"
    names = {wheels.normalize(n) for n, _ in groups["core"]}
    # what xray_flax imports and the GPU machine lacks (KINDS.md)
    assert {"grain", "ml_collections", "dm_pix", "jraph", "dm_tree", "imagecodecs", "pydicom"} <= names
    whl = os.path.join(REPO, ".whl")
    if os.path.isdir(whl):  # after benchmarks/device/fetch_wheels.sh
        ok, report = wheels.check(whl)
        assert ok, report


def test_a_malformed_wheel_list_is_a_clear_error(tmp_path):
    path = tmp_path / "wheels.txt"
    path.write_text("[core]\ngrain>=0.2\n")
    with pytest.raises(ValueError, match="name==version"):
        wheels.parse(str(path))
    path.write_text("[core]\ngrain==0.2\n[extra]\nGrain==0.3\n")
    with pytest.raises(ValueError, match="listed twice"):
        wheels.parse(str(path))
