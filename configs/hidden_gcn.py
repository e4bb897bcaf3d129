"""ArtExtract's 2025 graph tool, GCN, as a node-level regression (hidden_art/config.py: get_node_regression_config)."""

from xray_flax.hidden_art.config import get_node_regression_config


def get_config():
    return get_node_regression_config("gcn", heads=1)  # heads: no attention
