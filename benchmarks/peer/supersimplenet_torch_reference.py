"""anomalib 2.7's SuperSimpleNet modules on fixed inputs, for tests/test_supersimplenet.py.

    /tmp/peer/bin/python benchmarks/peer/supersimplenet_torch_reference.py OUT.npz

Runs in the peer venv (torch + anomalib 2.7, benchmarks/peer/setup_peer_venv.sh); our side
(jax, no torch) loads OUT.npz, converts the weights and compares. With torch.manual_seed(0):

* `UpscalingFeatureExtractor.forward` on two random taps (40 ch 8x8, 80 ch 4x4: EfficientNet-
  Lite0's stage3/stage4 on a 64-px tile; the timm extractor replaced by a stub returning them);
* `FeatureAdapter` and `SegmentationDetectionModule` (stop_grad True) with their own
  initialisation, BatchNorm affine parameters and running statistics randomised, in eval mode
  (running statistics) and in train mode (batch statistics), on the aggregated features;
* `AnomalyMapGenerator(sigma=4)` on the eval-mode map, to 64 x 64;
* `SupersimplenetModel.downsample_mask` of random 64 x 64 masks onto the 16 x 16 grid;
* `SSNLoss` on random logits and 0/1 targets, and on targets with no anomalous pixel.

Every tensor goes to OUT.npz under its name ("sd/<state-dict key>" for the weights).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from anomalib.models.image.supersimplenet.loss import SSNLoss
from anomalib.models.image.supersimplenet.torch_model import (
    AnomalyMapGenerator,
    FeatureAdapter,
    SegmentationDetectionModule,
    SupersimplenetModel,
    UpscalingFeatureExtractor,
)
from torch import nn


class _StubTaps(nn.Module):
    """Stands for anomalib's TimmFeatureExtractor: returns the given taps."""

    def __init__(self, taps: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.taps = taps

    def forward(self, _images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.taps


def main(out_path: str) -> None:
    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    taps = {"layer2": torch.randn(2, 40, 8, 8), "layer3": torch.randn(2, 80, 4, 4)}
    extractor = UpscalingFeatureExtractor.__new__(UpscalingFeatureExtractor)
    nn.Module.__init__(extractor)
    extractor.feature_extractor = _StubTaps(taps)
    extractor.pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
    features = extractor(torch.zeros(2, 3, 64, 64))
    out["tap_layer2"], out["tap_layer3"] = taps["layer2"].numpy(), taps["layer3"].numpy()
    out["features"] = features.numpy()

    channels = features.shape[1]
    adaptor = FeatureAdapter(channels)
    segdec = SegmentationDetectionModule(channel_dim=channels, stop_grad=True)
    with torch.no_grad():
        for module in segdec.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    for prefix, module in (("adaptor", adaptor), ("segdec", segdec)):
        for key, value in module.state_dict().items():
            out[f"sd/{prefix}.{key}"] = value.numpy().copy()

    with torch.no_grad():
        adaptor.eval()
        segdec.eval()
        adapted = adaptor(features)
        map_eval, score_eval = segdec(seg_features=adapted, cls_features=adapted)
        segdec.train()
        map_train, score_train = segdec(seg_features=adapted, cls_features=adapted)
        final = AnomalyMapGenerator(sigma=4)(map_eval, final_size=(64, 64))
    out["adapted"] = adapted.numpy()
    out["map_eval"], out["score_eval"] = map_eval.numpy(), score_eval.numpy()
    out["map_train"], out["score_train"] = map_train.numpy(), score_train.numpy()
    out["final_map"] = final.numpy()

    masks = (torch.rand(2, 64, 64) > 0.7).float()
    masks[1, 10:30, 20:50] = 1.0
    out["masks"] = masks.numpy()
    out["masks_down"] = SupersimplenetModel.downsample_mask(masks, 16, 16).numpy()

    loss = SSNLoss()
    logits = torch.randn(4, 1, 16, 16) * 2
    scores = torch.randn(4) * 2
    target_masks = (torch.rand(4, 1, 16, 16) > 0.8).float()
    target_labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    out["loss_logits"], out["loss_scores"] = logits.numpy(), scores.numpy()
    out["loss_masks"], out["loss_labels"] = target_masks.numpy(), target_labels.numpy()
    out["loss"] = np.asarray(loss(logits, scores, target_masks, target_labels).item())
    out["loss_normal_only"] = np.asarray(
        loss(logits, scores, torch.zeros_like(target_masks), torch.zeros_like(target_labels)).item()
    )
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
