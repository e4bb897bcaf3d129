"""Kept for config files written against it: the base config is `xray_flax.config_base`.

New config files import `from xray_flax.config_base import get_base_config`, which works
wherever the file is (this module imports only when the repository root is on sys.path).
"""

from xray_flax.config_base import get_base_config

__all__ = ["get_base_config"]
