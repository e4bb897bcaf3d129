"""ArtExtract's graph Siamese network, GCN (configs/hidden_base.py get_graph_config)."""

from configs.hidden_base import get_graph_config


def get_config():
    return get_graph_config("gcn", heads=1)  # heads: no attention
