"""ArtExtract's graph Siamese network, GAT (xray_flax/hidden_art/config.py get_graph_config)."""

from xray_flax.hidden_art.config import get_graph_config


def get_config():
    return get_graph_config("gat", heads=4)  # heads: ours: 4; ArtExtract: 1
