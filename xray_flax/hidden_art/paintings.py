"""The paintings of a hidden-art run: simulated multispectral paintings or a folder of a known layout.

`load_split(config, split)` gives every painting of a split as a scene dict (`rgb`, `bands`,
`wavelengths`, and `hidden` / `hidden_mask` when the data carry the truth); simulated paintings
(xray_flax/hidden_art/simulate.py) are generated into the cache on first use.
"""

from __future__ import annotations

import ml_collections

from xray_flax import errors
from xray_flax.hidden_art import data, simulate


def dataset_root(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(layout, root) of the configured data; simulated data are generated on first use."""
    d = config.data
    if d.source == "simulated":
        params = simulate.SimulationParams.from_config(d.simulation)
        return "artextract", simulate.ensure_simulated(params, d.cache_dir)
    if d.source != "files":
        raise errors.ConfigError(f"config.data.source={d.source!r}; expected 'simulated' or 'files'")
    if not d.root:
        raise errors.ConfigError(
            "config.data.source='files' needs config.data.root (a folder of the configured layout)"
        )
    return d.layout, d.root


def load_split(config: ml_collections.ConfigDict, split: str) -> list[dict]:
    layout, root = dataset_root(config)
    bands = tuple(int(b) for b in config.data.bands) or None
    records = data.list_scenes(layout, root, split=split, bands=bands)
    if not records:
        raise data.readers.DataError(f"no paintings in split {split!r} of {root} ({layout} layout)")
    return [data.load_scene(r) for r in records]
