"""ArtExtract's graph Siamese network, GCN (xray_flax/hidden_art/config.py get_graph_config)."""

from xray_flax.hidden_art.config import get_graph_config


def get_config():
    return get_graph_config("gcn", heads=1)  # heads: no attention
