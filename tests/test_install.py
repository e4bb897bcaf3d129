"""What `pip install -e .` puts in the environment: config files load by path with no top-level
`configs` package installed; the `xray-flax` console command beside the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

from xray_flax import config_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REINSTALL = f"reinstall the package: {sys.executable} -m pip install -e {REPO}"


def _python_outside_the_repository(code: str, tmp_path) -> subprocess.CompletedProcess:
    """`python -c code` from another folder: neither the repository nor its configs/ on sys.path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_config_files_load_by_path_without_a_configs_package(tmp_path):
    code = (
        "import importlib.util, os\n"
        "from xray_flax import config_files\n"
        "assert importlib.util.find_spec('configs') is None, 'a top-level configs package is installed'\n"
        "hard = config_files.load(os.path.join(config_files.CONFIGS_DIR, 'hard.py'))\n"
        "draem = config_files.load(os.path.join(config_files.CONFIGS_DIR, 'draem_cpu.py')).get_config()\n"
        "gat = config_files.load(os.path.join(config_files.CONFIGS_DIR, 'hidden_gat.py')).get_config()\n"
        "print(hard.get_config('highpass').method, draem.model.reconstructive, gat.method_name)\n"
    )
    done = _python_outside_the_repository(code, tmp_path)
    assert done.returncode == 0, f"{done.stderr[-2000:]}\n({REINSTALL} if it predates pyproject.toml)"
    assert done.stdout.split() == [
        "High-pass",
        "energy",
        "(training-free",
        "reference)",
        "(hard",
        "data)",
        "draem",
        "gat",
    ]


def test_configs_dir_is_the_repository_folder_and_sibling_loads_by_name():
    assert os.path.samefile(config_files.CONFIGS_DIR, os.path.join(REPO, "configs"))
    paper = config_files.sibling(os.path.join(config_files.CONFIGS_DIR, "draem.py"), "paper")
    assert paper.get_config().data.patch_size == 512


def _console_command() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "xray-flax")
    assert os.path.isfile(path) and os.access(path, os.X_OK), f"{path} is missing: {REINSTALL}"
    return path


def test_the_console_command_prints_the_command_lines_help(tmp_path):
    done = subprocess.run([_console_command(), "--help"], cwd=tmp_path, capture_output=True, text=True)
    # absl's --help exits 1 (as `python -m xray_flax.main --help` does).
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stdout.startswith("Command line: python -m xray_flax.main --config")
    assert "--workdir: Directory for checkpoints, logs and results." in done.stdout


def test_the_console_command_reports_a_bad_flag_in_one_line_and_exits_2(tmp_path):
    done = subprocess.run(
        [_console_command(), "--no_such_flag", "--workdir", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: Unknown command line flag 'no_such_flag'"


def test_the_console_command_runs_a_config_file_from_another_folder(tmp_path):
    """Outside the repository (the console command puts no folder of it on sys.path) a config
    file that loads a sibling (hard.py -> highpass.py) resolves; a workdir without a checkpoint
    then fails in one line."""
    config = os.path.join(config_files.CONFIGS_DIR, "hard.py:highpass")
    done = subprocess.run(
        [_console_command(), f"--config={config}", f"--workdir={tmp_path / 'w'}", "--mode=evaluate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
