"""The config a workdir was trained with (`<workdir>/config.json`), as a `--config` file.

`--mode evaluate` and `--mode predict` need no `--config`: `xray_flax/main.py` then passes
``--config=<this file>:<workdir>`` (`with_workdir_config`) before absl parses the command
line, so the saved config goes through the same `config_flags` machinery as a
`configs/*.py` file and every ``--config.X=...`` override is applied and type-checked
against it (an override of a key the saved config lacks is refused, as with any config; a
knob the code added after the run was trained gets its default, which keeps the old behaviour).

Imports nothing heavy: config files are loaded while flags are parsed, before
jax.distributed is initialised.
"""

from __future__ import annotations

import json
import os
import re

import ml_collections

from xray_flax import config_files
from xray_flax.errors import ConfigError

CONFIG_NAME = "config.json"


def load(workdir: str) -> ml_collections.ConfigDict:
    """`<workdir>/config.json` as a ConfigDict (FileNotFoundError when it is missing)."""
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: pass --config, or point --workdir at a directory written by --mode train"
        )
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid JSON ({e}); pass --config with the config it was trained with"
        ) from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} holds no config object; pass --config with the config it was trained with")
    if saved.get("family") == "hidden_art":  # the second family: its template is its method's config file
        return ml_collections.ConfigDict(_typed(saved, _hidden_art_template(saved.get("config_name", ""))))
    if "detector" not in saved:
        raise ConfigError(
            f"{path} has no 'detector' field: it was written by an earlier version of xray_flax; pass "
            f"--config (e.g. configs/default.py) together with --workdir, or retrain into a new workdir"
        )
    return ml_collections.ConfigDict(_typed(saved, _template(saved["detector"])))


def template(config) -> ml_collections.ConfigDict | None:
    """The code's default config of `config`'s detector, or of its hidden-art method (its config
    file): the types its knobs have (`xray_flax.config_check`); None when that is unknown."""
    if config.get("family") == "hidden_art":
        return _hidden_art_template(config.get("config_name", ""))
    return _template(config.get("detector"))


def _hidden_art_template(config_name) -> ml_collections.ConfigDict | None:
    """The default config of a hidden-art method (configs/<config_name>.py), None if unknown."""
    if not isinstance(config_name, str) or not re.fullmatch(r"\w+", config_name):
        return None
    try:
        return config_files.load(os.path.join(config_files.CONFIGS_DIR, f"{config_name}.py")).get_config()
    except (ImportError, AttributeError, ValueError, FileNotFoundError):
        return None


def _template(detector) -> ml_collections.ConfigDict | None:
    """The code's default config of `detector`: the types JSON cannot keep."""
    # Imported late: config_base imports the detector registry (JAX), and this module is loaded
    # while flags are parsed, before jax.distributed is initialised.
    from xray_flax import config_base  # noqa: PLC0415

    try:
        return config_base.get_base_config(detector)
    except (ValueError, KeyError, TypeError):
        return None  # an unknown detector: reported where the config is used, naming config.detector


def _typed(value, template):
    """JSON `value` with the types of the config files: tuples (JSON keeps lists only) and
    typed None placeholders (`config_dict.placeholder`), so `--config.X=...` can override them."""
    if isinstance(value, dict):
        sub = template if isinstance(template, ml_collections.ConfigDict) else None
        typed = {}
        for key, item in value.items():
            child = sub[key] if sub is not None and key in sub else None
            if item is None and child is None and sub is not None and key in sub:
                typed[key] = _typed_none(sub, key)
            else:
                typed[key] = _typed(item, child)
        if sub is not None:
            # A knob added to the code after this workdir was trained: its default keeps the
            # earlier behaviour (the project's rule for new knobs), so a saved config gets it
            # and `--config.X=...` can override it.
            for key in sub.keys():
                if key not in typed and not isinstance(sub[key], ml_collections.ConfigDict):
                    typed[key] = _typed_none(sub, key) if sub[key] is None else sub[key]
        return typed
    if isinstance(value, list):
        return tuple(_typed(item, None) for item in value)
    return value


def _typed_none(template: ml_collections.ConfigDict, key: str):
    """None for `template[key]`, a placeholder of its type when the template declares one."""
    field_type = template.get_type(key)
    return None if field_type is type(None) else ml_collections.config_dict.placeholder(field_type)


def get_config(workdir: str) -> ml_collections.ConfigDict:
    """Entry point of `config_flags` (``--config=<this file>:<workdir>``)."""
    try:
        return load(workdir)
    except FileNotFoundError as e:
        # config_flags defers an IOError until the config is first read, after the overrides
        # were refused as unknown flags; a ValueError is reported at once.
        raise ConfigError(str(e)) from None


def flag_value(argv: list[str], name: str) -> tuple[bool, str | None]:
    """(present, value) of flag `name` in `argv` (``--name=v``, ``--name v``, one dash too)."""
    value, present = None, False
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        for prefix in (f"--{name}", f"-{name}"):
            if arg == prefix:
                present = True
                value = argv[i + 1] if i + 1 < len(argv) else None
                i += 1
            elif arg.startswith(prefix + "="):
                present, value = True, arg[len(prefix) + 1 :]
        i += 1
    return present, value


def with_workdir_config(argv: list[str]) -> list[str]:
    """`argv` with ``--config=<this file>:<workdir>`` added when evaluate/predict has no --config.

    Unchanged for --mode train (which needs --config), when --config is given, or without
    --workdir (absl then reports the missing flag). FileNotFoundError names a missing
    `<workdir>/config.json`.
    """
    has_config, _ = flag_value(argv, "config")
    _, mode = flag_value(argv, "mode")
    _, workdir = flag_value(argv, "workdir")
    if has_config or mode not in ("evaluate", "predict", "export") or not workdir:
        return list(argv)
    path = os.path.join(workdir, CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: pass --config, or point --workdir at a directory written by --mode train"
        )
    module = os.path.abspath(__file__)
    # config_flags splits at the first ':', so a ':' in the workdir reaches get_config intact.
    return [argv[0], f"--config={module}:{workdir}", *argv[1:]]
