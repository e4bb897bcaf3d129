"""The paintings of a hidden-art run: simulated multispectral paintings or a folder of a known layout.

`load_split(config, split)` gives every painting of a split as a scene dict (`rgb`, `bands`,
`wavelengths`, and `hidden` / `hidden_mask` when the data carry the truth); simulated paintings
(xray_flax/hidden_art/simulate.py) are generated into the cache on first use.
"""

from __future__ import annotations

import ml_collections

from xray_flax import config_rules, errors
from xray_flax.hidden_art import data, simulate

SOURCES = ("simulated", "files")


def check(config: ml_collections.ConfigDict, *, reads_data: bool = True) -> list[str]:
    """The problems of the hidden-art `config.data` section, one sentence each (none: it is fine).

    `reads_data`: the run reads the paintings, so a folder named must exist.
    """
    d = config.data
    problems = config_rules.one_of("config.data.source", d.source, SOURCES)
    if d.source == "files":
        problems += config_rules.one_of("config.data.layout", d.layout, data.LAYOUTS)
        if reads_data:
            problems += config_rules.folder("config.data.root", d.root, "for config.data.source='files'")
    bands = d.bands
    if not isinstance(bands, (tuple, list)) or not all(config_rules.is_int(b) and b >= 1 for b in bands):
        problems.append(f"config.data.bands={bands!r} must be a tuple of 1-based band indices (>= 1), or ()")
    if d.source == "simulated":
        try:
            simulate.SimulationParams.from_config(d.simulation)
        except errors.ConfigError as e:
            problems += errors.problems_of(e)
        except (TypeError, ValueError) as e:  # a value that does not convert to its knob's type
            problems.append(f"config.data.simulation: {errors.one_line(e)}")
    return problems


def dataset_root(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(layout, root) of the configured data; simulated data are generated on first use."""
    d = config.data
    errors.require(config_rules.one_of("config.data.source", d.source, SOURCES))
    if d.source == "simulated":
        params = simulate.SimulationParams.from_config(d.simulation)
        return "artextract", simulate.ensure_simulated(params, d.cache_dir)
    errors.require(config_rules.folder("config.data.root", d.root, "for config.data.source='files'"))
    return d.layout, d.root


def load_split(config: ml_collections.ConfigDict, split: str) -> list[dict]:
    layout, root = dataset_root(config)
    bands = tuple(int(b) for b in config.data.bands) or None
    records = data.list_scenes(layout, root, split=split, bands=bands)
    if not records:
        raise data.readers.DataError(f"no paintings in split {split!r} of {root} ({layout} layout)")
    return [data.load_scene(r) for r in records]
