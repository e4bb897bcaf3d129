"""PatchCore (Roth et al. 2022) with anomalib's settings: WRN50-2 layers 2+3, 256 px.

Settings: docs/papers.md, "PatchCore and PaDiM"; xray_flax/detectors/patchcore. The Wide-ResNet-50-2 weights
cannot be downloaded here: pass a torchvision or timm state dict with
--config.backbone.weights=/path/wide_resnet50_2.pth (anomalib: timm wide_resnet50_2.racm_in1k;
the paper: torchvision V1, 78.47 % top-1).

The bank. anomalib keeps 10 % of all training patches after stacking all of them: over the
paper's 11,988 tiles of 256 px (1,024 patches each, 12.3 M patches of 1,536 floats = 75 GB
before the coreset) that is 1.2 M entries, 7.5 GB. Here the bank is 131,072 entries (~1 %, the
paper's PatchCore-1 % setting; 0.8 GB in float32) streamed through a 262,144-patch buffer
(1.6 GB): fit memory ~2.5 GB plus one batch of activations, whatever the number of tiles.
Raise model.bank_size on a large GPU (the search cost per tile is 1,024 x bank x 1,536 MACs).

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). One pass over the training tiles; the fit state is saved every
`train.checkpoint_every` batches and a killed fit resumes there.
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("patchcore")
    config.data.patch_size = 256  # [anomalib: 256 x 256 input]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the backbone's RGB input
    config.train.batch_size = 32  # tiles per fitting batch [anomalib: 32]
    config.model.bank_size = 131_072  # [ours: ~1 % of 12.3 M patches; the paper's 1 % coreset]
    config.model.chunk_size = 262_144
    config.train.checkpoint_every = 50  # batches between saves of the partial fit
    config.eval.batch_size = 32
    return config
