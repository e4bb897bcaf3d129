"""ArtExtract's 2025 graph tool, GAT, as a node-level regression (hidden_art/config.py: get_node_regression_config)."""

from xray_flax.hidden_art.config import get_node_regression_config


def get_config():
    return get_node_regression_config("gat", heads=4)  # heads: ours: 4; ArtExtract: 1
