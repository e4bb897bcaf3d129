"""Your own scans: a folder of X-ray scans in, anomaly maps of every scan out.

    python -m xray_flax.main --config configs/scans.py --workdir workdirs/my_scans \
        --config.data.root=/path/to/scans
    python -m xray_flax.main --config configs/scans.py:gpu --workdir workdirs/my_scans_gpu \
        --config.data.root=/path/to/scans

`configs/scans.py` (the default, `cpu`): PaDiM on ImageNet EfficientNet-Lite0 features, 128-px
tiles. It fits in one pass over the clean tiles, no training steps: minutes on a 2-core CPU for
a few scans of a few thousand pixels a side (docs/results.md has the measured costs), needs no
GPU, and on the hard simulated development set it scores above the paper's model at its CPU
default and PatchCore, level with the training-free raw-patch nearest neighbour, not above it
(docs/results.md, "PaDiM and PatchCore on the hard set"). [ours]

`configs/scans.py:gpu`: the paper's model (configs/paper.py: DRAEM with a Nested U-Net on
512-px tiles, the paper's training schedule) on the same folder: hours to days, for a GPU.

The folder (`data.root`, searched recursively): scans as 8/16-bit PNG or TIFF (any
compression), 12/14-bit data in 16-bit files, float TIFF or DICOM; optional pixel masks
`<name>_mask.png` beside a scan and/or a labels CSV (`labels.csv` in the root, or
`--config.data.labels_csv`); scans without any label are used as normal (clean) for training
(`data.train_on_unlabelled`) and get label -1 in the evaluation. Scans are split by scan into
train/val/test (`data.split_fractions`). README.md, "Your own scans", shows a tree.
"""

from xray_flax import backbones, config_files, errors
from xray_flax.config_base import get_base_config

VARIANTS = ("cpu", "gpu")


def _scans_data(config):
    config.data.source = "scans"
    config.data.root = ""  # set it: --config.data.root=/path/to/scans
    config.data.channels = 1  # grey radiographs
    config.data.train_on_unlabelled = True  # a lab's scans are mostly unlabelled and clean
    config.data.split_fractions = (0.6, 0.2, 0.2)  # by scan: at least 5 scans for one of each
    return config


def get_config(variant: str = "cpu"):
    if variant not in VARIANTS:
        raise errors.ConfigError(f"configs/scans.py:{variant}: expected one of {', '.join(VARIANTS)}")
    if variant == "gpu":
        config = config_files.sibling(__file__, "paper").get_config()
        config.method = "your scans: the paper's model (DRAEM + Nested U-Net, 512 px)"
        return _scans_data(config)
    config = get_base_config("padim")
    config.method = "your scans: PaDiM (EfficientNet-Lite0, 128 px)"
    config.data.patch_size = 128  # small defects stay a visible fraction of a tile
    config.data.stride = 128
    # Taps at strides 4/8/16 (24/40/80 channels), d = 100 of the 144 kept, as configs/padim_cpu.py.
    config.backbone = backbones.defaults("efficientnet_lite0", ("stage2", "stage3", "stage4"))
    config.train.batch_size = 8  # tiles per fitting batch: 131,072 pixels, one update on a CPU
    config.train.checkpoint_every = 50  # batches between saves of the partial fit
    config.eval.batch_size = 16
    config.eval.predict.batch_size = 16
    return _scans_data(config)
