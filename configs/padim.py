"""PaDiM (Defard et al. 2021) with anomalib's settings: ResNet-18 layers 1-3, d = 100, 256 px.

Settings: docs/papers.md, "PatchCore and PaDiM"; xray_flax/detectors/padim (the memory formula and the numbers
of each setting). The ResNet-18 weights cannot be downloaded here: pass a torchvision or timm
state dict with --config.backbone.weights=/path/resnet18.pth (anomalib: timm resnet18.a1_in1k;
the paper: torchvision V1, 69.76 % top-1). The paper's other row, WRN50-2 with d = 550:

    --config.backbone.name=wide_resnet50_2 --config.model.n_features=550
    --config.backbone.weights=/path/wide_resnet50_2.pth

(5.0 GB of L^-1 at 256 px, 9.9 GB of float64 fit state on the host; on a GPU prefer
--config.model.accumulate=float32, 5.0 GB on device).

Point it at real scans: --config.data.source=scans --config.data.root=/path/to/scans
(docs/data.md). Tiles are 256 px, anomalib's input side (the original code resizes to 256 and
centre-crops 224; our pipeline tiles and does not resize). One pass over the training tiles;
the fit state is saved every `train.checkpoint_every` batches and a killed fit resumes there.
"""

from xray_flax.config_base import get_base_config


def get_config():
    config = get_base_config("padim")
    config.data.patch_size = 256  # [anomalib: 256 x 256 input]
    config.data.stride = 256
    config.data.channels = 1  # grey X-rays, replicated to the backbone's RGB input
    config.train.batch_size = 32  # tiles per fitting batch [anomalib: 32]
    config.train.checkpoint_every = 50  # batches between saves of the partial fit
    config.eval.batch_size = 32
    return config
