"""Config files (configs/*.py) loaded by path, as `--config configs/x.py` loads them.

The repository's configs/ folder is not an installed package (no top-level `configs` in
site-packages), so a config file imports `xray_flax` only, and one that builds on another file
of its folder loads it with `sibling(__file__, name)`: configs/draem.py is configs/paper.py with
DRAEM's networks. A leaf: imports nothing but the standard library.
"""

from __future__ import annotations

import importlib.util
import os
import re
import types

# The repository's configs/ folder: beside the package in a source checkout or an editable
# install (the README's), absent from a wheel install, which ships no config files.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(path: str) -> types.ModuleType:
    """The config file at `path` as a module (FileNotFoundError when there is none)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    name = "xray_flax_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config file `<name>.py` in the folder of `config_file` (a config file's `__file__`)."""
    return load(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))
