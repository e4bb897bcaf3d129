"""ArtExtract's graph Siamese network, GAT (configs/hidden_base.py get_graph_config)."""

from configs.hidden_base import get_graph_config


def get_config():
    return get_graph_config("gat", heads=4)  # heads: ours: 4; ArtExtract: 1
