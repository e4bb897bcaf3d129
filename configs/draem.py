"""The DRAEM baseline (Zavrtanik et al. 2021) on the same data as the paper's model.

DRAEM's own networks (reconstructive encoder-decoder 128..1024, discriminative U-Net 64..512
with five pools), DRAEM's blend (beta ~ U[0, 0.8) on the original image) and DTD textures.
Widths and steps follow configs/paper.py unless overridden.
"""

from xray_flax.config_files import sibling

paper = sibling(__file__, "paper")


def get_config():
    config = paper.get_config()
    config.method = "DRAEM (Zavrtanik et al. 2021)"
    config.paper_row = "DRAEM"
    config.model.reconstructive = "draem"
    config.model.discriminative = "draem"
    config.synthesis.blend = "draem"
    config.synthesis.beta_range = (0.0, 0.8)  # DRAEM code: beta ~ U[0, 0.8)
    config.synthesis.rotate_normal_probability = 0.3  # DRAEM code: rotate the normal image with p = 0.3
    return config
