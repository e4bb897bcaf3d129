"""ArtExtract's 2025 graph Siamese network, GCN, with its contrastive objective (xray_flax/hidden_art/gnn.py).

Kept to compare, and what it is: the objective rewards the RGB and band branches for agreeing, so
the shared encoder learns to discard what differs between them, the hidden layer; its map is at
chance level on the simulated paintings (docs/results.md, "Hidden-art extraction"). The
localising form of the same tool is configs/hidden_gcn.py.
"""

from xray_flax.hidden_art.config import get_graph_config


def get_config():
    config = get_graph_config("gcn", heads=1)
    config.model.objective = "contrastive"
    config.config_name = "hidden_gcn_contrastive"
    return config
