"""Kept for config files written against it: the hidden-art base config is
`xray_flax.hidden_art.config` (`get_hidden_config`, `get_graph_config`)."""

from xray_flax.hidden_art.config import get_graph_config, get_hidden_config

__all__ = ["get_graph_config", "get_hidden_config"]
