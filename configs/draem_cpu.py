"""The DRAEM baseline (Zavrtanik et al. 2021) at the CPU default's size, for the Table 2 command.

configs/default.py's data, steps and learning rate (64-px tiles of the simulated scans, 400
steps, Adam 1e-3) with DRAEM's own networks, blend and normal-image rotation (configs/draem.py),
every width scaled by 1/8 (reconstructive 16..128, discriminative 8..64) so that it trains on
2 CPU cores in minutes, as the paper's model does in configs/default.py.
"""

from xray_flax.config_files import sibling

default = sibling(__file__, "default")


def get_config():
    config = default.get_config()
    config.method = "DRAEM, CPU default"
    config.paper_row = "DRAEM"
    config.model.reconstructive = "draem"
    config.model.discriminative = "draem"
    config.model.width_multiplier = 0.125  # [ours] DRAEM's 128/64 base widths -> 16/8
    config.synthesis.blend = "draem"
    config.synthesis.beta_range = (0.0, 0.8)  # DRAEM code: beta ~ U[0, 0.8)
    config.synthesis.rotate_normal_probability = 0.3  # DRAEM code: rotate the normal image with p = 0.3
    return config
